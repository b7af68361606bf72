/** Synthetic boot images for tests that must not depend on the lab's cached kernel. */

/**
 * A synthetic bzImage: setup_sects 3 (4 sectors of setup including the boot sector), then a
 * protected-mode kernel of 0x800 bytes. Header fields (boot.rst):
 *   0x1F1 setup_sects 3            0x1FE boot_flag 0xAA55      0x200 jump EB 66 (header ends 0x268)
 *   0x202 "HdrS"                   0x206 version 0x020F        0x211 loadflags LOADED_HIGH
 *   0x22C initrd_addr_max 0x7FFFFFFF   0x230 kernel_alignment 0x200000   0x234 relocatable 1
 *   0x236 xloadflags KERNEL_64 | CAN_BE_LOADED_ABOVE_4G   0x238 cmdline_size 0x7FF
 *   0x248 payload_offset 0x100     0x24C payload_length 0x400
 *   0x258 pref_address 0x1000000   0x260 init_size 0x2000000
 */
export function syntheticBzImage(): Uint8Array {
  const image = new Uint8Array(4 * 512 + 0x800);
  const v = new DataView(image.buffer);
  image[0x1f1] = 3;
  v.setUint16(0x1fe, 0xaa55, true);
  image[0x200] = 0xeb;
  image[0x201] = 0x66;
  image.set([0x48, 0x64, 0x72, 0x53], 0x202);
  v.setUint16(0x206, 0x020f, true);
  image[0x211] = 0x01;
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  image[0x234] = 1;
  v.setUint16(0x236, 0x3, true);
  v.setUint32(0x238, 0x7ff, true);
  v.setUint32(0x248, 0x100, true);
  v.setUint32(0x24c, 0x400, true);
  v.setBigUint64(0x258, 0x1000000n, true);
  v.setUint32(0x260, 0x2000000, true);
  image.fill(0xcc, 4 * 512); // the "protected-mode kernel"
  return image;
}

/**
 * A synthetic vmlinux: ELF64 x86-64 header, two program headers at 0x40, a PT_NOTE segment at
 * 0x200 and one PT_LOAD segment at 0x1000.
 *   PT_LOAD: p_offset 0x1000, p_vaddr 0xffffffff81000000, p_paddr 0x1000000, filesz 0x100, memsz 0x300
 *   PT_NOTE: note "Linux" type 6 (4-byte desc), then note "Xen" type 18 (XEN_ELFNOTE_PHYS32_ENTRY)
 *            with an 8-byte desc 0x1000b20 (Linux emits it with _ASM_PTR)
 */
export function syntheticVmlinux(pvhEntry: bigint | null = 0x1000b20n): Uint8Array {
  const file = new Uint8Array(0x1100);
  const v = new DataView(file.buffer);
  file.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, 0x1000000n, true); // e_entry
  v.setBigUint64(32, 0x40n, true); // e_phoff
  v.setUint16(52, 64, true); // e_ehsize
  v.setUint16(54, 56, true); // e_phentsize
  v.setUint16(56, 2, true); // e_phnum
  const ph = (
    at: number,
    type: number,
    offset: number,
    vaddr: bigint,
    paddr: number,
    filesz: number,
    memsz: number,
  ) => {
    v.setUint32(at, type, true);
    v.setUint32(at + 4, 5, true);
    v.setBigUint64(at + 8, BigInt(offset), true);
    v.setBigUint64(at + 16, vaddr, true);
    v.setBigUint64(at + 24, BigInt(paddr), true);
    v.setBigUint64(at + 32, BigInt(filesz), true);
    v.setBigUint64(at + 40, BigInt(memsz), true);
    v.setBigUint64(at + 48, 0x200000n, true);
  };
  // Notes: {namesz, descsz, type, name padded to 4, desc padded to 4}
  let at = 0x200;
  const note = (name: string, type: number, desc: Uint8Array) => {
    v.setUint32(at, name.length + 1, true);
    v.setUint32(at + 4, desc.length, true);
    v.setUint32(at + 8, type, true);
    file.set(
      Array.from(name, (c) => c.charCodeAt(0)),
      at + 12,
    );
    const descAt = at + 12 + ((name.length + 1 + 3) & ~3);
    file.set(desc, descAt);
    at = descAt + ((desc.length + 3) & ~3);
  };
  note("Linux", 6, Uint8Array.of(1, 2, 3, 4));
  if (pvhEntry !== null) {
    const desc = new Uint8Array(8);
    new DataView(desc.buffer).setBigUint64(0, pvhEntry, true);
    note("Xen", 18, desc);
  }
  ph(0x40, 1, 0x1000, 0xffffffff81000000n, 0x1000000, 0x100, 0x300);
  ph(0x40 + 56, 4, 0x200, 0xffffffff81000200n, 0x1000200, at - 0x200, at - 0x200);
  file.fill(0x90, 0x1000, 0x1100);
  return file;
}
