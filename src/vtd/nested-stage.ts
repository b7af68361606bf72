/**
 * The second stage of a nested PASID entry (PGTT=011, VT-d 3.8): every address the first
 * stage produces or reads its tables from is guest-physical and goes through this stage. The
 * purpose of each lookup decides the fault reason when it fails (VT-d 7.1.3: SFL.5-8 for the
 * first-stage structures, SGN for the final output).
 */
import { PERM_READ, PERM_WRITE } from "../engine/access.ts";
import { FR } from "./fault-reasons.ts";
import {
  NEST_OUTPUT_WRITE,
  NEST_ROOT_TABLE,
  NEST_TABLE,
  NEST_TABLE_WRITE,
  type NestedStage,
} from "./first-stage.ts";
import { type SecondStageWalker, WALK, WalkOut } from "./second-stage.ts";

export class NestedSecondStage implements NestedStage {
  private readonly walker: SecondStageWalker;
  private readonly out = new WalkOut();
  private root = 0;
  private levels = 0;
  private limit = 0;
  lastSizeBytes = 0;
  lastPerms = 0;
  reason = 0;

  constructor(walker: SecondStageWalker) {
    this.walker = walker;
  }

  /** Uses the second-stage table `root` with `levels` levels, inputs below `limit`. */
  bind(root: number, levels: number, limit: number): this {
    this.root = root;
    this.levels = levels;
    this.limit = limit;
    return this;
  }

  toHost(gpa: number, purpose: number): number {
    if (!(gpa < this.limit)) {
      this.reason = FR.SM_NESTED_ADDRESS_BEYOND_AW;
      return -1;
    }
    const w = this.out;
    const code = this.walker.walk(this.root, this.levels, gpa, 0, w);
    if (code !== WALK.OK) {
      this.reason =
        code === WALK.ACCESS
          ? FR.SM_SS_ACCESS
          : code === WALK.RESERVED
            ? FR.SM_SS_RESERVED
            : code === WALK.ROOT_INVALID
              ? FR.SM_SS_ROOT_INVALID
              : FR.SM_SS_NOT_PRESENT;
      return -1;
    }
    const needWrite = purpose === NEST_TABLE_WRITE || purpose === NEST_OUTPUT_WRITE;
    if ((w.perms & (needWrite ? PERM_WRITE : PERM_READ)) === 0) {
      this.reason =
        purpose === NEST_ROOT_TABLE
          ? FR.SM_NESTED_FS_ROOT_READ_DENIED
          : purpose === NEST_TABLE
            ? FR.SM_NESTED_FS_READ_DENIED
            : purpose === NEST_TABLE_WRITE
              ? FR.SM_NESTED_FS_WRITE_DENIED
              : needWrite
                ? FR.SM_WRITE_DENIED
                : FR.SM_READ_DENIED;
      return -1;
    }
    this.lastSizeBytes = w.sizeBytes;
    this.lastPerms = w.perms;
    return w.gpaBase + (gpa - w.iovaBase);
  }
}
