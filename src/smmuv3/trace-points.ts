/**
 * The SMMUv3's trace points (source "smmuv3"), declared in one place as QEMU's trace-events:
 * name, category, fields and meaning. `viommu run --trace help` prints them.
 */
import { defineTracePoints, type TracePoint } from "../engine/trace.ts";
import { EVT } from "./events.ts";

export const SMMU_TRACE = defineTracePoints("smmuv3", {
  cr0: { category: "config", fields: ["value", "old"], doc: "CR0 written (SMMUEN, EVENTQEN, CMDQEN)" },
  gbpa: { category: "config", fields: ["value"], doc: "GBPA updated (a write with Update set)" },
  bad_ste: {
    category: "config",
    fields: ["sid", "why"],
    doc: "an STE failed validation (C_BAD_STE and kin)",
  },
  bad_cd: { category: "config", fields: ["sid", "ssid", "why"], doc: "a CD failed validation (C_BAD_CD)" },
  irq_ctrl: { category: "irq", fields: ["value"], doc: "IRQ_CTRL written" },
  gerror: {
    category: "irq",
    fields: ["bit", "gerror"],
    doc: "a global error became active (GERROR toggled)",
  },
  cmdq_error: {
    category: "queue",
    fields: ["code", "cons"],
    doc: "the command queue stopped: CERROR_ILL or ABT",
  },
  sync_sev: { category: "queue", fields: [], doc: "CMD_SYNC with CS = SEV" },
  cfgi_ste: { category: "invalidate", fields: ["sid"], doc: "a stream's STE and CDs dropped (CFGI_STE*)" },
  tlbi_nh_all: { category: "invalidate", fields: ["vmid"], doc: "TLBI_NH_ALL" },
  tlbi_nh_asid: { category: "invalidate", fields: ["vmid", "asid"], doc: "TLBI_NH_ASID" },
  tlbi_nh_va: { category: "invalidate", fields: ["vmid", "key", "sizeBytes"], doc: "TLBI_NH_VA (0: leaf)" },
  tlbi_nh_vaa: { category: "invalidate", fields: ["vmid", "key", "sizeBytes"], doc: "TLBI_NH_VAA (0: leaf)" },
  tlbi_s12_vmall: { category: "invalidate", fields: ["vmid"], doc: "TLBI_S12_VMALL" },
  tlbi_s2_ipa: { category: "invalidate", fields: ["vmid", "ipa", "sizeBytes"], doc: "TLBI_S2_IPA (0: leaf)" },
  tlbi_nsnh_all: { category: "invalidate", fields: [], doc: "TLBI_NSNH_ALL" },
});

const EVENT_FIELDS = ["sid", "ssid", "result"] as const;

/** One point per event record type (7.3), named as the type in lower case: what the push did. */
const EVENT_POINTS = defineTracePoints(
  "smmuv3",
  Object.fromEntries(
    Object.keys(EVT).map((name) => [
      name.toLowerCase(),
      {
        category: "fault" as const,
        fields: EVENT_FIELDS,
        doc: `event record ${name}: written, merged or lost`,
      },
    ]),
  ),
);

/** The trace point of event record type `typeName` (an EVT key), if it has one. */
export function eventTracePoint(typeName: string): TracePoint<typeof EVENT_FIELDS> | undefined {
  return EVENT_POINTS[typeName.toLowerCase()];
}
