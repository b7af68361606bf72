/**
 * Hostile-input fuzzing with fixed seeds (printed): random register accesses to the platform
 * devices never throw, and corrupted boot images are refused with ImageError only.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { DebugExit } from "../../src/devices/debug-exit.ts";
import { FwCfg } from "../../src/devices/fw-cfg.ts";
import { Ioapic } from "../../src/devices/ioapic.ts";
import { CapturingSink, Uart16550 } from "../../src/devices/uart16550.ts";
import { GuestMemory } from "../../src/engine/guest-memory.ts";
import type { AccessSize, IoHandler } from "../../src/platform/bus.ts";
import { ImageError } from "../../src/vmm/elf.ts";
import { builtinGuestImage } from "../../src/vmm/x86/builtin-guest.ts";
import { e820Map, ramLayout } from "../../src/vmm/x86/layout.ts";
import { loadMultiboot } from "../../src/vmm/x86/multiboot.ts";
import { prng } from "../support/prng.ts";

const SIZES: AccessSize[] = [1, 2, 4, 8];

function fuzzHandler(name: string, handler: IoHandler, span: number, seed: number, iterations: number): void {
  console.log(`fuzz ${name}: seed ${seed}, ${iterations} accesses`);
  const rnd = prng(seed);
  for (let i = 0; i < iterations; i++) {
    const offset = Math.floor(rnd() * span);
    const size = SIZES[Math.floor(rnd() * 4)];
    const value = rnd() < 0.1 ? 0xffffffff : Math.floor(rnd() * 2 ** 32);
    if (rnd() < 0.5) {
      const v = handler.read(offset, size);
      assert.ok(Number.isInteger(v) && v >= 0, `${name}: read(${offset}, ${size}) = ${v}`);
    } else {
      handler.write(offset, size, value);
    }
  }
}

test("device register files never throw on random accesses (fixed seeds)", () => {
  const sink = new CapturingSink();
  const uart = new Uart16550(sink, () => {});
  uart.setSource({ take: (max) => new Uint8Array(Math.min(max, 3)).fill(0x41) });
  fuzzHandler("uart16550", uart, 16, 0x5eed0001, 20000);
  const fwMemory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 1 << 16 }]);
  const fwCfg = new FwCfg({ ramSizeBytes: 1 << 28, cpus: 1, maxCpus: 1, memory: fwMemory });
  fuzzHandler("fw_cfg", fwCfg, 4, 0x5eed0002, 20000);
  // DMA descriptors: random addresses, and random bytes in RAM as descriptors.
  const rnd = prng(0x5eed0006);
  for (let i = 0; i < 2000; i++) {
    fwMemory.writeU32(Math.floor(rnd() * (1 << 14)) * 4, Math.floor(rnd() * 2 ** 32));
    fwCfg.dmaHandler.write(0, 4, rnd() < 0.9 ? 0 : Math.floor(rnd() * 2 ** 32));
    fwCfg.dmaHandler.write(4, 4, Math.floor(rnd() * 2 ** 32));
    fwCfg.dmaHandler.write(4, 4, (Math.floor(rnd() * (1 << 12)) * 16) << 0);
  }
  let delivered = 0;
  const ioapic = new Ioapic(() => delivered++);
  fuzzHandler("ioapic", ioapic, 0x100, 0x5eed0003, 20000);
  for (let pin = -2; pin < 30; pin++) ioapic.setPin(pin, true);
  ioapic.eoi(0x1234);
  fuzzHandler("isa-debug-exit", new DebugExit(() => {}), 4, 0x5eed0004, 2000);
  assert.ok(delivered >= 0);
});

test("corrupted Multiboot images are refused with ImageError, never another exception (fixed seed)", () => {
  const seed = 0x5eed0005;
  const iterations = 300;
  console.log(`fuzz multiboot: seed ${seed}, ${iterations} images`);
  const rnd = prng(seed);
  const original = builtinGuestImage();
  const layout = ramLayout(16 << 20);
  const memory = GuestMemory.anonymous([{ gpa: 0, sizeBytes: 16 << 20 }]);
  let loaded = 0;
  for (let i = 0; i < iterations; i++) {
    const image = original.slice(0, rnd() < 0.2 ? Math.floor(rnd() * original.length) : original.length);
    const flips = 1 + Math.floor(rnd() * 8);
    for (let f = 0; f < flips && image.length > 0; f++) {
      // Bias towards the ELF header, program headers and the Multiboot header.
      const at =
        rnd() < 0.7 ? Math.floor(rnd() * Math.min(image.length, 0x1040)) : Math.floor(rnd() * image.length);
      image[at] = Math.floor(rnd() * 256);
    }
    try {
      loadMultiboot(memory, image, { cmdline: "x", modules: [], memoryMap: e820Map(layout) });
      loaded++;
    } catch (e) {
      assert.ok(e instanceof ImageError, `image ${i}: ${(e as Error).name}: ${(e as Error).message}`);
    }
  }
  console.log(`fuzz multiboot: ${loaded} of ${iterations} still loadable`);
});
