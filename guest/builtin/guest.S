/*
 * The viommu built-in guest: a bare-metal Multiboot (v1) program, 32-bit protected mode,
 * paging off, that checks the platform and drives the machine's vIOMMU with QEMU's edu device.
 *
 *   1. boot: EAX magic, Multiboot info (mem_upper, memory map); fw_cfg signature, CPUs, RAM
 *   2. PCI: finds edu (1234:11e8) and virtio-iommu-pci (1af4:1057) on bus 0 through 0xCF8
 *   3. no vIOMMU: edu DMA round trip through identity DMA
 *   4. virtio-iommu (VIRTIO 1.3 5.13): modern virtio-pci bring-up, requestq + eventq;
 *      edu DMA while unattached must fault; ATTACH, MAP one page at IOVA 0x08000000, DMA both
 *      ways and compare; DMA to an unmapped IOVA must fault (fault record on the eventq);
 *      UNMAP; DMA to the old IOVA must fault and leave memory untouched
 *   5. Intel VT-d (no virtio-iommu, a unit answering at 0xFED90000): root and context tables
 *      and second-stage page tables (4- or 3-level from CAP.SAGAW), SRTP, global context and
 *      IOTLB invalidation, TE; a DMA without a present PTE faults (fault recording register
 *      checked and cleared); DMA both ways; PTE cleared + domain-selective IOTLB invalidation,
 *      then the old IOVA faults and memory stays untouched
 *
 * Each check prints "ok"/"FAIL" on COM1; the verdict goes out through isa-debug-exit
 * (port 0x501): value 0 = pass (exit status 1), 1 = fail (exit status 3).
 *
 * Assembled with `as --32` and linked with `ld -m elf_i386 -T guest.ld` by the VMM.
 */

        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0x00000003           /* page-align modules, memory information */
        .set COM1, 0x3F8
        .set DEBUG_EXIT, 0x501
        .set FW_CFG_SEL, 0x510
        .set FW_CFG_DATA, 0x511
        .set PCI_ADDR, 0xCF8
        .set PCI_DATA, 0xCFC
        .set QSZ, 8                         /* entries per virtqueue */
        .set IOVA, 0x08000000               /* below edu's 28-bit DMA mask */
        .set EDU_BUF, 0x40000               /* edu's internal DMA buffer address */
        .set DMA_BYTES, 64
        .set VTD_BASE, 0xFED90000           /* the q35 VT-d unit's register page */

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        .text
        .code32
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        mov %eax, boot_eax
        mov %ebx, boot_ebx
        cld

        mov $s_banner, %esi
        call puts

        /* ---- 1. boot information ---- */
        mov $s_magic, %esi
        call puts
        mov boot_eax, %eax
        cmp $0x2BADB002, %eax
        sete %al
        call check

        mov $s_meminfo, %esi
        call puts
        mov boot_ebx, %ebx
        mov 8(%ebx), %eax                   /* mem_upper, KiB */
        shr $10, %eax
        call putdec
        mov $s_mib_mmap, %esi
        call puts
        mov 44(%ebx), %eax                  /* mmap_length / 24 bytes per entry */
        xor %edx, %edx
        mov $24, %ecx
        div %ecx
        call putdec
        mov $s_entries, %esi
        call puts
        mov boot_ebx, %ebx
        mov (%ebx), %eax
        and $0x41, %eax                     /* flags: mem_* (bit 0) and mmap (bit 6) valid */
        cmp $0x41, %eax
        sete %al
        call check

        mov $s_fwcfg, %esi
        call puts
        xor %eax, %eax                      /* key 0x00: signature */
        call fwcfg_select
        call fwcfg_read32
        cmp $0x554D4551, %eax               /* "QEMU" */
        jne 1f
        mov $s_cpus, %esi
        call puts
        mov $0x05, %eax                     /* FW_CFG_NB_CPUS */
        call fwcfg_select
        call fwcfg_read32
        and $0xFFFF, %eax
        call putdec
        mov $s_ram, %esi
        call puts
        mov $0x03, %eax                     /* FW_CFG_RAM_SIZE (low 32 bits) */
        call fwcfg_select
        call fwcfg_read32
        shr $20, %eax
        call putdec
        mov $s_mib, %esi
        call puts
        mov $1, %al
        call check
        jmp 2f
1:      xor %al, %al
        call check
2:
        /* ---- 2. PCI ---- */
        mov $0x11E81234, %eax
        call pci_find
        mov %eax, edu_bdf
        mov $0x10571AF4, %eax
        call pci_find
        mov %eax, viommu_bdf

        mov $s_edu, %esi
        call puts
        mov edu_bdf, %eax
        cmp $-1, %eax
        jne 3f
        mov $s_absent, %esi
        call puts
        xor %al, %al
        call check
        jmp verdict
3:      call putbdf
        mov edu_bdf, %eax
        shl $8, %eax
        or $0x10, %eax                      /* BAR0 */
        call pci_read
        and $0xFFFFFFF0, %eax
        mov %eax, edu_mmio
        mov $s_at, %esi
        call puts
        mov edu_mmio, %eax
        call puthex
        mov $s_id, %esi
        call puts
        mov edu_mmio, %ebx
        mov (%ebx), %eax                    /* identification register */
        call puthex
        cmp $0x010000ED, %eax
        sete %al
        call check
        mov edu_bdf, %eax
        call pci_enable_master

        /* MSI: edu -> local APIC (KVM's, through KVM_SIGNAL_MSI), vector 0x40 */
        call setup_interrupts
        mov $s_msi, %esi
        call puts
        mov $0xFEE00000, %eax               /* destination APIC 0, physical */
        mov $0x40, %ecx                     /* fixed, edge, vector 0x40 */
        call edu_program_msi
        mov $irq_count_40, %ebx
        call edu_raise_and_wait
        call check

        /* INTx: edu INTA# -> IOAPIC pin (level) -> local APIC; the EOI reaches the IOAPIC */
        mov $s_intx, %esi
        call puts
        xor %ebx, %ebx                      /* destination APIC 0 */
        mov $(0x8000 | 0x42), %ecx          /* level, active high, fixed, vector 0x42 */
        mov $irq_count_42, %edx
        call intx_test
        call check

        /* SMP: with more than one CPU (fw_cfg NB_CPUS), INIT-SIPI-SIPI starts the others in
           real mode at 0x7000, where each increments a counter and halts */
        mov $0x05, %eax
        call fwcfg_select
        call fwcfg_read32
        and $0xFFFF, %eax
        cmp $1, %eax
        jbe 1f
        call start_aps
        call check
1:
        mov viommu_bdf, %eax
        cmp $-1, %eax
        jne virtio_iommu_test
        mov VTD_BASE, %eax                  /* VER_REG: all ones when no unit decodes there */
        cmp $-1, %eax
        jne vtd_test

        /* ---- 3. no vIOMMU: identity DMA ---- */
        mov $s_identity, %esi
        call puts
        mov $0x11223344, %ebx
        call fill_src
        mov $src_page, %eax
        call edu_to_device
        mov $dst_page, %eax
        call edu_to_ram
        mov $dst_page, %esi
        call compare_pattern
        call check
        jmp verdict

        /* ---- 4. virtio-iommu ---- */
virtio_iommu_test:
        mov $s_viommu, %esi
        call puts
        mov viommu_bdf, %eax
        call putbdf
        call virtio_find_caps
        mov $s_caps, %esi
        call puts
        mov common_cfg, %eax
        test %eax, %eax
        jz 5f
        mov notify_base, %eax
        test %eax, %eax
        jz 5f
        mov $1, %al
        call check
        mov viommu_bdf, %eax
        call pci_enable_master
        call virtio_bring_up
        mov $s_bringup, %esi
        call puts
        call check                          /* AL from virtio_bring_up */
        jmp 6f
5:      xor %al, %al
        call check
        jmp verdict
6:
        /* (a) unattached endpoint: DMA must be blocked */
        mov $s_unattached, %esi
        call puts
        call fill_dst_marker
        mov $dst_page, %eax                 /* a valid guest-physical address */
        call edu_to_ram                     /* device buffer -> RAM: nothing may land */
        call dst_untouched
        push %eax
        mov $irq_count_45, %ebx             /* take its eventq interrupt, so none is pending */
        call wait_irq
        call take_fault                     /* consume the fault record, if any */
        pop %eax
        call check

        /* (b) ATTACH domain 1, MAP IOVA -> dst_page (one 4 KiB page, read+write) */
        mov $s_attach, %esi
        call puts
        mov edu_bdf, %eax
        call vi_attach
        call check_status_ok
        mov $s_map, %esi
        call puts
        mov $IOVA, %eax
        mov $dst_page, %ebx
        call vi_map
        call check_status_ok

        /* (c) DMA both ways through the mapping */
        mov $s_dma_in, %esi
        call puts
        mov $0x55667788, %ebx
        call fill_src
        call fill_dst_marker
        /* copy src_page into the mapped page, then device reads it from IOVA */
        mov $src_page, %esi
        mov $dst_page, %edi
        mov $DMA_BYTES, %ecx
        rep movsb
        mov $IOVA, %eax
        call edu_to_device
        call fill_dst_marker                /* clear the page again */
        mov $IOVA + 0x100, %eax
        call edu_to_ram                     /* device buffer -> IOVA + 0x100 */
        mov $dst_page + 0x100, %esi
        call compare_pattern
        call check

        /* (d) a DMA to an unmapped IOVA faults and the eventq reports it, with an MSI-X
           interrupt (eventq vector 0 -> CPU vector 0x45) */
        mov $s_unmapped, %esi
        call puts
        mov $IOVA + 0x1000, %eax
        call edu_to_ram
        mov $irq_count_45, %ebx
        call wait_irq
        and msix_ok, %al
        mov %al, %bl
        call take_fault
        and %bl, %al
        call check

        /* (e) UNMAP, then the old IOVA faults and memory stays untouched */
        mov $s_unmap, %esi
        call puts
        mov $IOVA, %eax
        call vi_unmap
        call check_status_ok
        mov $s_after_unmap, %esi
        call puts
        call fill_dst_marker
        mov $IOVA, %eax
        call edu_to_ram
        mov $irq_count_45, %ebx
        call wait_irq
        mov %al, %bl
        call take_fault
        and %al, %bl
        call dst_untouched
        and %bl, %al
        call check
        jmp verdict

        /* ---- 5. Intel VT-d (legacy mode, second-stage tables), VT-d 3.4, 9.1-9.3 ---- */
vtd_test:
        mov $s_vtd, %esi
        call puts
        mov VTD_BASE, %eax
        call puthex
        mov VTD_BASE + 0x10, %eax           /* ECAP.IRO (17:8): IOTLB registers at IRO*16 */
        shr $8, %eax
        and $0x3FF, %eax
        shl $4, %eax
        add $VTD_BASE, %eax
        mov %eax, vtd_iva
        mov VTD_BASE + 0x08, %eax           /* CAP.FRO (33:24): fault records at FRO*16 */
        shr $24, %eax
        mov VTD_BASE + 0x0C, %ecx
        and $3, %ecx
        shl $8, %ecx
        or %ecx, %eax
        shl $4, %eax
        add $VTD_BASE, %eax
        mov %eax, vtd_frcd
        movzbl VTD_BASE + 0x0D, %eax        /* CAP.NFR (47:40): records - 1 */
        inc %eax
        mov %eax, vtd_nfr
        mov VTD_BASE + 0x08, %eax           /* CAP.SAGAW (12:8): bit 2 = 4-level, bit 1 = 3-level */
        shr $8, %eax
        mov $2, %ecx
        mov $sl_pml4, %edx
        test $4, %eax
        jnz 1f
        mov $1, %ecx
        mov $sl_pdpt, %edx
        test $2, %eax
        jz vtd_fail
1:      mov %ecx, vtd_aw
        mov %edx, vtd_top
        mov $1, %al
        call check

        /* tables: root[bus 0] -> context table; context[edu devfn] -> second-stage tables */
        mov $s_vtd_tables, %esi
        call puts
        movl $ctx_table + 1, root_table     /* P */
        mov edu_bdf, %eax
        and $0xFF, %eax
        shl $4, %eax
        mov vtd_top, %edx
        or $1, %edx                         /* P, TT = 00 (untranslated requests) */
        mov %edx, ctx_table(%eax)
        mov vtd_aw, %edx
        or $(1 << 8), %edx                  /* DID 1 */
        mov %edx, ctx_table + 8(%eax)
        movl $sl_pdpt + 3, sl_pml4          /* R | W */
        movl $sl_pd + 3, sl_pdpt
        movl $sl_pt + 3, sl_pd + 64 * 8     /* IOVA 0x08000000: PD index 64 */
        movl $dst_page + 3, sl_pt           /* PT index 0 -> dst_page, read + write */
        movl $root_table, VTD_BASE + 0x20   /* RTADDR */
        movl $0, VTD_BASE + 0x24
        mov $0x40000000, %eax               /* GCMD.SRTP */
        call vtd_gcmd
        movl $0, VTD_BASE + 0x28            /* CCMD: ICC | global (CIRG 01) */
        movl $0xA0000000, VTD_BASE + 0x2C
        mov $VTD_BASE + 0x2C, %ebx
        call vtd_wait_bit31
        mov $0x90000000, %eax               /* IOTLB: IVT | global (IIRG 01) */
        call vtd_iotlb
        mov $0x80000000, %eax               /* GCMD.TE */
        call vtd_gcmd
        mov VTD_BASE + 0x1C, %eax           /* GSTS.TES */
        test $0x80000000, %eax
        setnz %al
        call check

        /* a DMA to an IOVA without a present PTE faults with a fault record; the unit's fault
           event message (FEDATA/FEADDR, unmasked in FECTL) interrupts the CPU (VT-d 7.3) */
        movl $0x44, VTD_BASE + 0x3C         /* FEDATA: vector 0x44 */
        movl $0xFEE00000, VTD_BASE + 0x40   /* FEADDR: APIC 0 */
        movl $0, VTD_BASE + 0x44            /* FEUADDR */
        movl $0, VTD_BASE + 0x38            /* FECTL: IM = 0 */
        mov $s_vtd_unmapped, %esi
        call puts
        mov $IOVA + 0x1000, %eax
        call edu_to_ram
        mov $irq_count_44, %ebx
        call wait_irq
        mov %al, %bl
        mov $IOVA + 0x1000, %eax
        call vtd_take_fault
        and %bl, %al
        call check
        movl $0x80000000, VTD_BASE + 0x38   /* FECTL: masked again */

        /* DMA both ways through the mapping */
        mov $s_dma_in, %esi
        call puts
        mov $0x55667788, %ebx
        call fill_src
        call fill_dst_marker
        mov $src_page, %esi
        mov $dst_page, %edi
        mov $DMA_BYTES, %ecx
        rep movsb
        mov $IOVA, %eax
        call edu_to_device
        call fill_dst_marker
        mov $IOVA + 0x100, %eax
        call edu_to_ram
        mov $dst_page + 0x100, %esi
        call compare_pattern
        call check

        /* unmap: clear the PTE, domain-selective IOTLB invalidation, the old IOVA faults */
        mov $s_vtd_unmap, %esi
        call puts
        movl $0, sl_pt
        mov $0xA0000001, %eax               /* IVT | domain-selective (IIRG 10) | DID 1 */
        call vtd_iotlb
        call fill_dst_marker
        mov $IOVA, %eax
        call edu_to_ram
        mov $IOVA, %eax
        call vtd_take_fault
        mov %al, %bl
        call dst_untouched
        and %bl, %al
        call check

        mov VTD_BASE + 0x10, %eax           /* ECAP.IR (bit 3) and ECAP.QI (bit 1) */
        and $0x0A, %eax
        cmp $0x0A, %eax
        jne verdict
        call vtd_interrupt_remapping
        jmp verdict
vtd_fail:
        xor %al, %al
        call check
        jmp verdict

/* vtd_gcmd: EAX = command bit; GCMD = (GSTS & persistent enables) | bit, wait GSTS (VT-d 11.4.4) */
vtd_gcmd:
        push %ecx
        mov VTD_BASE + 0x1C, %ecx
        and $0x96FFFFFF, %ecx               /* keep TE, QIE, IRE, CFI; drop one-shot bits */
        or %eax, %ecx
        mov %ecx, VTD_BASE + 0x18
        mov $100000, %ecx
1:      test %eax, VTD_BASE + 0x1C
        jnz 2f
        loop 1b
2:      pop %ecx
        ret

/* vtd_iotlb: EAX = high dword of IOTLB_REG (IVT set); wait for IVT to clear */
vtd_iotlb:
        mov vtd_iva, %ebx
        movl $0, 8(%ebx)
        mov %eax, 12(%ebx)
        add $12, %ebx
        jmp vtd_wait_bit31

/* vtd_wait_bit31: EBX = register dword; poll until bit 31 clears (bounded) */
vtd_wait_bit31:
        push %ecx
        mov $100000, %ecx
1:      testl $0x80000000, (%ebx)
        jz 2f
        loop 1b
2:      pop %ecx
        ret

/* vtd_take_fault: EAX = expected IOVA; AL = 1 when a fault record for edu at that page
   exists; prints it and clears F (VT-d 10.4.14) */
vtd_take_fault:
        push %ebx
        push %ecx
        push %edx
        push %esi
        mov %eax, %edx
        mov vtd_frcd, %ebx
        mov vtd_nfr, %ecx
1:      testl $0x80000000, 12(%ebx)         /* F */
        jnz 2f
        add $16, %ebx
        loop 1b
        xor %al, %al
        jmp 9f
2:      mov $s_frcd, %esi
        call puts
        movzbl 12(%ebx), %eax               /* FR */
        call puthex
        mov $s_fault_ep, %esi
        call puts
        movzwl 8(%ebx), %eax                /* SID */
        call putbdf
        mov $s_fault_addr, %esi
        call puts
        mov (%ebx), %eax                    /* FI (page) */
        and $0xFFFFF000, %eax
        call puthex
        mov $s_close, %esi
        call puts
        movzwl 8(%ebx), %ecx
        mov (%ebx), %esi
        and $0xFFFFF000, %esi
        movl $0x80000000, 12(%ebx)          /* write 1 to clear F */
        movl $1, VTD_BASE + 0x34            /* FSTS.PFO (RW1C) */
        xor %al, %al
        cmp edu_bdf, %ecx
        jne 9f
        and $0xFFFFF000, %edx
        cmp %edx, %esi
        jne 9f
        mov $1, %al
9:      pop %esi
        pop %edx
        pop %ecx
        pop %ebx
        ret

verdict:
        mov $s_summary, %esi
        call puts
        mov n_pass, %eax
        call putdec
        mov $s_passed, %esi
        call puts
        mov n_fail, %eax
        call putdec
        mov $s_failed, %esi
        call puts
        mov n_fail, %eax
        test %eax, %eax
        jnz 7f
        mov $s_pass, %esi
        call puts
        xor %eax, %eax
        jmp 8f
7:      mov $s_fail, %esi
        call puts
        mov $1, %eax
8:      mov $DEBUG_EXIT, %dx
        out %ax, %dx
9:      hlt                                 /* not reached: the VMM stops at the write */
        jmp 9b

/* ================================================================ checks and output */

/* check: AL != 0 -> "ok", else "FAIL"; counts both. */
check:
        push %esi
        test %al, %al
        jz 1f
        incl n_pass
        mov $s_ok, %esi
        jmp 2f
1:      incl n_fail
        mov $s_bad, %esi
2:      call puts
        pop %esi
        ret

/* check_status_ok: AL = virtio-iommu status byte; prints it, passes when 0 (S_OK). */
check_status_ok:
        push %eax
        mov $s_status, %esi
        call puts
        movzbl (%esp), %eax
        call putdec
        pop %eax
        test %al, %al
        sete %al
        jmp check

/* putc: AL, waiting for THRE. */
putc:
        push %edx
        push %eax
        mov $COM1 + 5, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %eax
        mov $COM1, %dx
        out %al, %dx
        pop %edx
        ret

/* puts: ESI = NUL-terminated string. */
puts:
        push %eax
        push %esi
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %esi
        pop %eax
        ret

/* puthex: EAX as 0x%08x. */
puthex:
        push %eax
        push %ecx
        push %edx
        mov %eax, %edx
        mov $'0', %al
        call putc
        mov $'x', %al
        call putc
        mov $8, %ecx
1:      rol $4, %edx
        mov %dl, %al
        and $0xF, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '9' - 1), %al
2:      call putc
        loop 1b
        pop %edx
        pop %ecx
        pop %eax
        ret

/* putdec: EAX unsigned decimal. */
putdec:
        push %eax
        push %ebx
        push %ecx
        push %edx
        mov $10, %ebx
        xor %ecx, %ecx
1:      xor %edx, %edx
        div %ebx
        push %edx
        inc %ecx
        test %eax, %eax
        jnz 1b
2:      pop %eax
        add $'0', %al
        call putc
        loop 2b
        pop %edx
        pop %ecx
        pop %ebx
        pop %eax
        ret

/* putbdf: EAX = requester ID, printed bb:dd.f */
putbdf:
        push %eax
        push %ebx
        mov %eax, %ebx
        shr $8, %eax
        call put2hex
        mov $':', %al
        call putc
        mov %ebx, %eax
        shr $3, %eax
        and $0x1F, %eax
        call put2hex
        mov $'.', %al
        call putc
        mov %ebx, %eax
        and $7, %eax
        add $'0', %al
        call putc
        pop %ebx
        pop %eax
        ret

put2hex:
        push %eax
        push %ecx
        mov %al, %cl
        shr $4, %al
        call hexdigit
        mov %cl, %al
        and $0xF, %al
        call hexdigit
        pop %ecx
        pop %eax
        ret
hexdigit:
        and $0xF, %al
        add $'0', %al
        cmp $'9', %al
        jbe 1f
        add $('a' - '9' - 1), %al
1:      jmp putc

/* ================================================================ fw_cfg */

fwcfg_select:                               /* AX = key */
        push %edx
        mov $FW_CFG_SEL, %dx
        out %ax, %dx
        pop %edx
        ret

fwcfg_read32:                               /* four data bytes, little-endian -> EAX */
        push %ebx
        push %ecx
        push %edx
        mov $FW_CFG_DATA, %dx
        xor %ebx, %ebx
        xor %ecx, %ecx
1:      in %dx, %al
        movzbl %al, %eax
        shl %cl, %eax
        or %eax, %ebx
        add $8, %cl
        cmp $32, %cl
        jb 1b
        mov %ebx, %eax
        pop %edx
        pop %ecx
        pop %ebx
        ret

/* ================================================================ PCI */

pci_read:                                   /* EAX = bdf << 8 | reg -> EAX */
        push %edx
        and $0x00FFFFFC, %eax
        or $0x80000000, %eax
        mov $PCI_ADDR, %dx
        out %eax, %dx
        mov $PCI_DATA, %dx
        in %dx, %eax
        pop %edx
        ret

pci_write:                                  /* EAX = bdf << 8 | reg, ECX = value */
        push %edx
        push %eax
        and $0x00FFFFFC, %eax
        or $0x80000000, %eax
        mov $PCI_ADDR, %dx
        out %eax, %dx
        mov $PCI_DATA, %dx
        mov %ecx, %eax
        out %eax, %dx
        pop %eax
        pop %edx
        ret

/* pci_find: EAX = device << 16 | vendor -> EAX = requester ID on bus 0, or -1 */
pci_find:
        push %ebx
        push %ecx
        mov %eax, %ecx
        xor %ebx, %ebx                      /* devfn */
1:      mov %ebx, %eax
        shl $8, %eax
        call pci_read
        cmp %ecx, %eax
        je 2f
        add $8, %ebx                        /* function 0 of each device */
        cmp $256, %ebx
        jb 1b
        mov $-1, %eax
        jmp 3f
2:      mov %ebx, %eax
3:      pop %ecx
        pop %ebx
        ret

pci_enable_master:                          /* EAX = bdf: Command |= memory | bus master */
        push %eax
        push %ecx
        shl $8, %eax
        or $0x04, %eax
        push %eax
        call pci_read
        mov %eax, %ecx
        and $0xFFFF, %ecx                   /* keep status write-1-to-clear bits zero */
        or $0x06, %ecx
        pop %eax
        call pci_write
        pop %ecx
        pop %eax
        ret

/* ================================================================ edu */

edu_wait:                                   /* poll DMA command bit 0 (bounded) */
        push %ecx
        mov edu_mmio, %ebx
        mov $100000, %ecx
1:      testl $1, 0x98(%ebx)
        jz 2f
        loop 1b
2:      pop %ecx
        ret

/* edu_to_device: EAX = RAM-side address (IOVA or GPA); DMA_BYTES into the device buffer */
edu_to_device:
        mov edu_mmio, %ebx
        mov %eax, 0x80(%ebx)                /* source */
        movl $0, 0x84(%ebx)
        movl $EDU_BUF, 0x88(%ebx)           /* destination */
        movl $0, 0x8C(%ebx)
        movl $DMA_BYTES, 0x90(%ebx)
        movl $0, 0x94(%ebx)
        movl $1, 0x98(%ebx)                 /* start, RAM -> device */
        jmp edu_wait

/* edu_to_ram: EAX = RAM-side address; DMA_BYTES from the device buffer */
edu_to_ram:
        mov edu_mmio, %ebx
        movl $EDU_BUF, 0x80(%ebx)
        movl $0, 0x84(%ebx)
        mov %eax, 0x88(%ebx)
        movl $0, 0x8C(%ebx)
        movl $DMA_BYTES, 0x90(%ebx)
        movl $0, 0x94(%ebx)
        movl $3, 0x98(%ebx)                 /* start, device -> RAM */
        jmp edu_wait

/* fill_src: EBX = 32-bit pattern seed; src_page[0..DMA_BYTES) = seed, seed+1, ... */
fill_src:
        push %ecx
        push %edi
        mov $src_page, %edi
        mov %ebx, %eax
        mov $DMA_BYTES / 4, %ecx
1:      stosl
        inc %eax
        loop 1b
        pop %edi
        pop %ecx
        ret

fill_dst_marker:
        push %ecx
        push %edi
        push %eax
        mov $dst_page, %edi
        mov $0xA5A5A5A5, %eax
        mov $4096 / 4, %ecx
        rep stosl
        pop %eax
        pop %edi
        pop %ecx
        ret

/* compare_pattern: ESI = buffer; AL = 1 when it holds the src pattern */
compare_pattern:
        push %ecx
        push %edi
        mov $src_page, %edi
        mov $DMA_BYTES, %ecx
        repe cmpsb
        sete %al
        pop %edi
        pop %ecx
        ret

/* dst_untouched: AL = 1 when dst_page still holds only the marker */
dst_untouched:
        push %ecx
        push %edi
        mov $dst_page, %edi
        mov $0xA5A5A5A5, %eax
        mov $4096 / 4, %ecx
        repe scasl
        sete %al
        pop %edi
        pop %ecx
        ret

/* ================================================================ virtio-pci */

/* virtio_find_caps: walks the vendor capabilities (VIRTIO 1.3 4.1.4) of viommu_bdf */
virtio_find_caps:
        pusha
        mov viommu_bdf, %ebp
        shl $8, %ebp
        mov %ebp, %eax
        or $0x34, %eax
        call pci_read
        and $0xFC, %eax
        mov %eax, %esi                      /* current capability offset */
        mov $48, %edi                       /* bound the walk */
1:      test %esi, %esi
        jz 9f
        dec %edi
        jz 9f
        mov %ebp, %eax
        or %esi, %eax
        call pci_read
        mov %eax, %edx                      /* id | next << 8 | len << 16 | cfg_type << 24 */
        cmp $0x09, %al
        jne 8f
        /* BAR base of cap.bar (a 64-bit BAR below 4 GiB: low dword) */
        mov %ebp, %eax
        or %esi, %eax
        add $4, %eax
        call pci_read
        and $0x7, %eax
        shl $2, %eax
        add $0x10, %eax
        or %ebp, %eax
        call pci_read
        and $0xFFFFFFF0, %eax
        mov %eax, %ebx
        mov %ebp, %eax                      /* + cap.offset */
        or %esi, %eax
        add $8, %eax
        call pci_read
        add %eax, %ebx
        mov %edx, %eax
        shr $24, %eax
        cmp $1, %al
        jne 2f
        mov %ebx, common_cfg
        jmp 8f
2:      cmp $2, %al
        jne 3f
        mov %ebx, notify_base
        mov %ebp, %eax
        or %esi, %eax
        add $16, %eax
        call pci_read
        mov %eax, notify_mult
        jmp 8f
3:      cmp $4, %al
        jne 8f
        mov %ebx, device_cfg
8:      mov %edx, %eax
        shr $8, %eax
        and $0xFC, %eax
        mov %eax, %esi
        jmp 1b
9:      popa
        ret

/* virtio_bring_up: VIRTIO 1.3 3.1.1 driver initialization; AL = 1 on success */
virtio_bring_up:
        mov common_cfg, %ebx
        movb $0, 20(%ebx)                   /* reset */
        movb $1, 20(%ebx)                   /* ACKNOWLEDGE */
        movb $3, 20(%ebx)                   /* | DRIVER */
        movl $1, 0(%ebx)                    /* device_feature_select = 1 */
        mov 4(%ebx), %eax
        test $1, %eax                       /* VIRTIO_F_VERSION_1 (bit 32) */
        jz 9f
        movl $0, 0(%ebx)
        mov 4(%ebx), %eax
        test $4, %eax                       /* VIRTIO_IOMMU_F_MAP_UNMAP (bit 2) */
        jz 9f
        movl $0, 8(%ebx)                    /* driver_feature_select = 0 */
        movl $4, 12(%ebx)                   /* MAP_UNMAP */
        movl $1, 8(%ebx)
        movl $1, 12(%ebx)                   /* VERSION_1 */
        movb $0x0B, 20(%ebx)                /* | FEATURES_OK */
        movb 20(%ebx), %al
        test $0x08, %al
        jz 9f
        xor %eax, %eax
        mov $rq_desc, %ecx
        call virtio_setup_queue
        mov %eax, rq_notify
        mov $1, %eax
        mov $eq_desc, %ecx
        call virtio_setup_queue
        mov %eax, eq_notify
        call virtio_msix_eventq             /* eventq -> MSI-X vector 0 -> CPU vector 0x45 */
        movb $0x0F, 20(%ebx)                /* | DRIVER_OK */
        call post_event_buffer
        mov $1, %al
        ret
9:      xor %al, %al
        ret


/* virtio_msix_eventq: MSI-X (PCI 3.0 6.8.2) on viommu_bdf: table entry 0 = fixed, vector
   0x45, APIC 0; enable; eventq's queue_msix_vector = 0 (VIRTIO 1.3 4.1.4.3). EBX = common
   config (preserved). Sets msix_ok when the device accepted the vector. */
virtio_msix_eventq:
        pusha
        mov viommu_bdf, %ebp
        shl $8, %ebp
        mov %ebp, %eax
        or $0x34, %eax
        call pci_read
        and $0xFC, %eax
        mov %eax, %esi
        mov $48, %edx
1:      test %esi, %esi
        jz 9f
        dec %edx
        jz 9f
        mov %ebp, %eax
        or %esi, %eax
        call pci_read
        cmp $0x11, %al                      /* MSI-X capability */
        je 2f
        shr $8, %eax
        and $0xFC, %eax
        mov %eax, %esi
        jmp 1b
2:      mov %eax, %edi                      /* id | next | message control */
        mov %ebp, %eax                      /* table offset | BIR */
        or %esi, %eax
        add $4, %eax
        call pci_read
        mov %eax, %ecx
        and $7, %eax                        /* BIR -> BAR register */
        shl $2, %eax
        add $0x10, %eax
        or %ebp, %eax
        call pci_read
        and $0xFFFFFFF0, %eax
        and $0xFFFFFFF8, %ecx
        add %ecx, %eax                      /* table entry 0 */
        movl $0xFEE00000, 0(%eax)           /* message address: APIC 0 */
        movl $0, 4(%eax)
        movl $0x45, 8(%eax)                 /* message data: fixed, vector 0x45 */
        movl $0, 12(%eax)                   /* unmasked */
        mov %edi, %ecx
        or $0x80000000, %ecx                /* MSI-X enable (control bit 15) */
        and $0xBFFFFFFF, %ecx               /* function mask off (bit 14) */
        mov %ebp, %eax
        or %esi, %eax
        call pci_write
        mov common_cfg, %ebx
        movw $1, 22(%ebx)                   /* queue_select = eventq */
        movw $0, 26(%ebx)                   /* queue_msix_vector = 0 */
        cmpw $0, 26(%ebx)                   /* the device answers NO_VECTOR if it refuses */
        sete msix_ok
9:      popa
        ret

/* virtio_setup_queue: EAX = queue, ECX = desc table (avail at +128, used at +256);
   returns EAX = notify address. EBX = common_cfg. */
virtio_setup_queue:
        mov %ax, 22(%ebx)                   /* queue_select */
        movw $QSZ, 24(%ebx)                 /* queue_size */
        movw $0xFFFF, 26(%ebx)              /* queue_msix_vector: none (polled) */
        mov %ecx, 32(%ebx)                  /* queue_desc */
        movl $0, 36(%ebx)
        lea 128(%ecx), %edx
        mov %edx, 40(%ebx)                  /* queue_driver (avail ring) */
        movl $0, 44(%ebx)
        lea 256(%ecx), %edx
        mov %edx, 48(%ebx)                  /* queue_device (used ring) */
        movl $0, 52(%ebx)
        movw $1, 28(%ebx)                   /* queue_enable */
        movzwl 30(%ebx), %eax               /* queue_notify_off */
        imul notify_mult, %eax
        add notify_base, %eax
        ret

/* post_event_buffer: one 64-byte device-writable buffer on the eventq */
post_event_buffer:
        push %eax
        push %ebx
        push %ecx
        mov $eq_desc, %ebx
        movl $event_buf, 0(%ebx)
        movl $0, 4(%ebx)
        movl $64, 8(%ebx)
        movw $2, 12(%ebx)                   /* VIRTQ_DESC_F_WRITE */
        movw $0, 14(%ebx)
        movzwl eq_avail_idx, %ecx
        mov %ecx, %eax
        and $QSZ - 1, %eax
        movw $0, eq_desc + 128 + 4(,%eax,2) /* avail.ring[idx % QSZ] = 0 */
        inc %ecx
        mov %cx, eq_avail_idx
        mov %cx, eq_desc + 128 + 2          /* avail.idx */
        mov eq_notify, %eax
        movw $1, (%eax)                     /* notify queue 1 */
        pop %ecx
        pop %ebx
        pop %eax
        ret

/* take_fault: AL = 1 when a new fault record arrived for edu (reason MAPPING); prints it
   and re-posts the buffer. */
take_fault:
        push %ebx
        movzwl eq_desc + 256 + 2, %eax      /* used.idx */
        cmp eq_used_seen, %ax
        je 8f
        mov %ax, eq_used_seen
        mov $s_fault, %esi
        call puts
        movzbl event_buf, %eax              /* reason */
        call putdec
        mov $s_fault_ep, %esi
        call puts
        mov event_buf + 8, %eax             /* endpoint */
        call putbdf
        mov $s_fault_addr, %esi
        call puts
        mov event_buf + 16, %eax            /* address (low 32 bits) */
        call puthex
        mov $s_close, %esi
        call puts
        movzbl event_buf, %ebx
        mov event_buf + 8, %eax
        call post_event_buffer
        cmp edu_bdf, %eax
        jne 8f
        cmp $2, %ebx                        /* VIRTIO_IOMMU_FAULT_R_MAPPING */
        jne 8f
        mov $1, %al
        pop %ebx
        ret
8:      xor %al, %al
        pop %ebx
        ret

/* vi_request: ECX = request length (built in req_buf); AL = status byte of the tail */
vi_request:
        push %ebx
        push %edx
        mov $rq_desc, %ebx
        movl $req_buf, 0(%ebx)
        movl $0, 4(%ebx)
        mov %ecx, 8(%ebx)
        movw $1, 12(%ebx)                   /* NEXT */
        movw $1, 14(%ebx)
        movl $tail_buf, 16(%ebx)
        movl $0, 20(%ebx)
        movl $4, 24(%ebx)
        movw $2, 28(%ebx)                   /* WRITE */
        movw $0, 30(%ebx)
        movl $0xFFFFFFFF, tail_buf
        movzwl rq_avail_idx, %ecx
        mov %ecx, %eax
        and $QSZ - 1, %eax
        movw $0, rq_desc + 128 + 4(,%eax,2)
        inc %ecx
        mov %cx, rq_avail_idx
        mov %cx, rq_desc + 128 + 2
        mov rq_notify, %eax
        movw $0, (%eax)                     /* notify queue 0 */
        mov $1000000, %edx
1:      cmpw rq_desc + 256 + 2, %cx         /* used.idx caught up? */
        je 2f
        dec %edx
        jnz 1b
        mov $0xFF, %al                      /* no answer */
        jmp 3f
2:      movb tail_buf, %al
3:      pop %edx
        pop %ebx
        ret

clear_req:
        push %edi
        push %ecx
        push %eax
        mov $req_buf, %edi
        xor %eax, %eax
        mov $16, %ecx
        rep stosl
        pop %eax
        pop %ecx
        pop %edi
        ret

/* vi_attach: EAX = endpoint; domain 1 (5.13.6.3) */
vi_attach:
        call clear_req
        movb $1, req_buf                    /* VIRTIO_IOMMU_T_ATTACH */
        movl $1, req_buf + 4                /* domain */
        mov %eax, req_buf + 8               /* endpoint */
        mov $20, %ecx
        jmp vi_request

/* vi_map: EAX = IOVA, EBX = GPA; one 4 KiB page read+write in domain 1 (5.13.6.5) */
vi_map:
        call clear_req
        movb $3, req_buf                    /* VIRTIO_IOMMU_T_MAP */
        movl $1, req_buf + 4
        mov %eax, req_buf + 8               /* virt_start */
        add $0xFFF, %eax
        mov %eax, req_buf + 16              /* virt_end (inclusive) */
        mov %ebx, req_buf + 24              /* phys_start */
        movl $3, req_buf + 32               /* READ | WRITE */
        mov $36, %ecx
        jmp vi_request

/* vi_unmap: EAX = IOVA; the 4 KiB page (5.13.6.6) */
vi_unmap:
        call clear_req
        movb $4, req_buf                    /* VIRTIO_IOMMU_T_UNMAP */
        movl $1, req_buf + 4
        mov %eax, req_buf + 8
        add $0xFFF, %eax
        mov %eax, req_buf + 16
        mov $28, %ecx
        jmp vi_request


/* ================================================================ interrupts */

/* setup_interrupts: IDT (exceptions -> exc_handler, 0x40/0x41 -> counters), LAPIC on, STI */
setup_interrupts:
        pusha
        xor %ecx, %ecx
1:      mov $exc_handler, %eax
        cmp $0x40, %ecx
        jne 2f
        mov $irq40_handler, %eax
2:      cmp $0x41, %ecx
        jne 3f
        mov $irq41_handler, %eax
3:      cmp $0x42, %ecx
        jne 5f
        mov $irq42_handler, %eax
5:      cmp $0x43, %ecx
        jne 6f
        mov $irq43_handler, %eax
6:      cmp $0x44, %ecx
        jne 7f
        mov $irq44_handler, %eax
7:      cmp $0x45, %ecx
        jne 8f
        mov $irq45_handler, %eax
8:      cmp $0xFF, %ecx
        jne 4f
        mov $spurious_handler, %eax
4:      mov %eax, %edx
        and $0xFFFF, %eax
        or $0x00080000, %eax                /* selector 0x08 */
        mov %eax, idt(,%ecx,8)
        and $0xFFFF0000, %edx
        or $0x8E00, %edx                    /* present, DPL 0, 32-bit interrupt gate */
        mov %edx, idt + 4(,%ecx,8)
        inc %ecx
        cmp $256, %ecx
        jb 1b
        lidt idt_descriptor
        movl $0, 0xFEE00080                 /* TPR */
        movl $0x1FF, 0xFEE000F0             /* SVR: APIC software enable, spurious vector 0xFF */
        popa
        ret

exc_handler:
        cli
        mov $s_exception, %esi
        call puts
        mov $1, %eax
        mov $DEBUG_EXIT, %dx
        out %ax, %dx
1:      hlt
        jmp 1b

/* The handlers count and resume at irq_resume with interrupts off, dropping the interrupt
   frame (EIP, CS, EFLAGS) instead of returning with IRET: under this nested KVM (kvm-pvm)
   IRET is emulated, and KVM's instruction emulator handles IRET in real mode only. */
irq40_handler:
        add $12, %esp
        incl irq_count_40
        jmp *irq_resume
irq41_handler:
        add $12, %esp
        incl irq_count_41
        jmp *irq_resume
irq42_handler:
        add $12, %esp
        incl irq_count_42
        jmp *irq_resume
irq43_handler:
        add $12, %esp
        incl irq_count_43
        jmp *irq_resume
irq44_handler:
        add $12, %esp
        incl irq_count_44
        jmp *irq_resume
irq45_handler:
        add $12, %esp
        incl irq_count_45
        jmp *irq_resume
spurious_handler:
        add $12, %esp
        jmp *irq_resume

/* edu_program_msi: EAX = message address, ECX = message data; MSI enable (PCI 3.0 6.8.1) */
edu_program_msi:
        pusha
        mov %eax, %edi
        mov %ecx, %esi
        mov edu_bdf, %ebp
        shl $8, %ebp
        mov %ebp, %eax
        or $0x34, %eax
        call pci_read
        and $0xFC, %eax
        mov %eax, %ebx
        mov $48, %edx
1:      test %ebx, %ebx
        jz 9f
        dec %edx
        jz 9f
        mov %ebp, %eax
        or %ebx, %eax
        call pci_read
        cmp $0x05, %al                      /* MSI capability */
        je 2f
        shr $8, %eax
        and $0xFC, %eax
        mov %eax, %ebx
        jmp 1b
2:      mov %eax, msi_control               /* id | next | control */
        mov %ebp, %eax
        or %ebx, %eax
        add $4, %eax
        mov %edi, %ecx
        call pci_write                      /* address low */
        add $4, %eax
        xor %ecx, %ecx
        call pci_write                      /* address high (64-bit capable) */
        add $4, %eax
        mov %esi, %ecx
        call pci_write                      /* data */
        mov %ebp, %eax
        or %ebx, %eax
        mov msi_control, %ecx
        and $0xFF8FFFFF, %ecx               /* one vector (MME 0) */
        or $0x00010000, %ecx                /* MSI enable */
        call pci_write
9:      popa
        ret

/* edu_raise_and_wait: EBX = counter the handler bumps; raises edu interrupt status bit 0
   (register 0x60), waits for the interrupt, acknowledges it; AL = 1 if exactly one came */
edu_raise_and_wait:
        push %ecx
        push %edx
        push %esi
        mov (%ebx), %edx
        mov edu_mmio, %esi
        movl $2f, irq_resume
        movl $1, 0x60(%esi)                 /* raise */
        mov %edx, wait_old
        mov $2000, %ecx
        sti                                 /* the interrupt, if any, is taken in the loop */
        /* Each LSR read exits to the VMM, so a pending interrupt is injected on re-entry
           even where the hypervisor would not notice IF becoming 1 by itself (kvm-pvm). */
1:      mov $0x3FD, %dx
        in %dx, %al
        loop 1b
2:      cli
        mov wait_old, %edx
        cmp (%ebx), %edx
        je 3f
        movl $0, 0xFEE000B0                 /* local APIC EOI */
3:      movl $1, 0x64(%esi)                 /* acknowledge */
        mov (%ebx), %eax
        sub %edx, %eax
        cmp $1, %eax
        sete %al
        pop %esi
        pop %edx
        pop %ecx
        ret



/* wait_irq: EBX = counter of an interrupt that may already be pending; enables interrupts
   briefly (exits in the loop, see edu_raise_and_wait); AL = 1 when the counter moved. */
wait_irq:
        push %ecx
        push %edx
        mov (%ebx), %edx
        mov %edx, wait_old
        movl $2f, irq_resume
        mov $2000, %ecx
        sti
1:      mov $0x3FD, %dx
        in %dx, %al
        loop 1b
2:      cli
        mov wait_old, %edx
        cmp (%ebx), %edx
        je 3f
        movl $0, 0xFEE000B0                 /* local APIC EOI */
3:      cmp (%ebx), %edx
        setne %al
        pop %edx
        pop %ecx
        ret

/* ================================================================ INTx through the IOAPIC */

/* ioapic_write: EAX = register index, ECX = value */
ioapic_write:
        mov %eax, 0xFEC00000
        mov %ecx, 0xFEC00010
        ret
/* ioapic_read: EAX = register index -> EAX */
ioapic_read:
        mov %eax, 0xFEC00000
        mov 0xFEC00010, %eax
        ret

/* intx_test: EBX = redirection entry high dword, ECX = low dword (level, unmasked), EDX =
   the counter its vector's handler bumps. AL = 1 when edu's INTA# arrives exactly once and
   the local APIC EOI (forwarded by KVM to our IOAPIC) clears the entry's remote IRR. */
intx_test:
        push %ebx
        push %ecx
        push %edx
        push %esi
        push %edi
        push %ebp
        mov %edx, %ebp                      /* counter */
        push %ecx
        push %ebx
        call edu_program_msi_off
        mov edu_bdf, %eax                   /* IOAPIC pin: Interrupt Line, as firmware set it */
        shl $8, %eax
        or $0x3C, %eax
        call pci_read
        movzbl %al, %edi
        lea 0x11(,%edi,2), %eax
        pop %ecx                            /* high dword */
        call ioapic_write
        lea 0x10(,%edi,2), %eax
        pop %ecx                            /* low dword */
        call ioapic_write
        mov (%ebp), %edx
        mov %edx, wait_old
        mov edu_mmio, %esi
        movl $2f, irq_resume
        movl $1, 0x60(%esi)                 /* raise: the device asserts INTA# */
        mov $2000, %ecx
        sti
1:      mov $0x3FD, %dx                     /* exits: see edu_raise_and_wait */
        in %dx, %al
        loop 1b
2:      cli
        mov wait_old, %edx
        movl $1, 0x64(%esi)                 /* acknowledge: INTA# deasserts */
        movl $0, 0xFEE000B0                 /* local APIC EOI -> KVM_EXIT_IOAPIC_EOI */
        lea 0x10(,%edi,2), %eax
        call ioapic_read
        mov %eax, %ebx
        mov $s_rte, %esi
        call puts
        mov %ebx, %eax
        call puthex
        mov $0x20, %al
        call putc
        lea 0x10(,%edi,2), %eax             /* mask the entry again */
        mov $0x10000, %ecx
        call ioapic_write
        mov (%ebp), %eax
        sub %edx, %eax
        cmp $1, %eax
        sete %al
        test $0x4000, %ebx                  /* remote IRR clear after the EOI */
        setz %cl
        and %cl, %al
        pop %ebp
        pop %edi
        pop %esi
        pop %edx
        pop %ecx
        pop %ebx
        ret

/* edu_program_msi_off: clears MSI enable so edu signals INTx */
edu_program_msi_off:
        pusha
        mov edu_bdf, %ebp
        shl $8, %ebp
        mov %ebp, %eax
        or $0x34, %eax
        call pci_read
        and $0xFC, %eax
        mov %eax, %ebx
        mov $48, %edx
1:      test %ebx, %ebx
        jz 9f
        dec %edx
        jz 9f
        mov %ebp, %eax
        or %ebx, %eax
        call pci_read
        cmp $0x05, %al
        je 2f
        shr $8, %eax
        and $0xFC, %eax
        mov %eax, %ebx
        jmp 1b
2:      mov %eax, %ecx
        and $0xFFFEFFFF, %ecx               /* MSI enable off */
        mov %ebp, %eax
        or %ebx, %eax
        call pci_write
9:      popa
        ret


/* ================================================================ application processors */

        .set AP_TRAMPOLINE, 0x7000          /* SIPI vector 0x07 */
        .set AP_COUNTER, 0x100              /* offset in the trampoline page */

/* start_aps: EAX = CPU count; AL = 1 when all the others checked in */
start_aps:
        push %ebx
        push %ecx
        push %esi
        push %edi
        mov %eax, %ebx
        dec %ebx                            /* application processors expected */
        mov $s_smp, %esi
        call puts
        mov %ebx, %eax
        call putdec
        mov $s_smp2, %esi
        call puts
        mov $ap_trampoline, %esi
        mov $AP_TRAMPOLINE, %edi
        mov $(ap_trampoline_end - ap_trampoline), %ecx
        rep movsb
        movw $0, AP_TRAMPOLINE + AP_COUNTER
        movl $0, 0xFEE00310                 /* ICR high: destination by shorthand */
        movl $0x000C4500, 0xFEE00300        /* INIT, level assert, all excluding self */
        movl $0x000C4607, 0xFEE00300        /* STARTUP, vector 0x07 */
        movl $0x000C4607, 0xFEE00300        /* STARTUP again (SDM 8.4.4.1) */
        mov $10000000, %ecx
1:      movzwl AP_TRAMPOLINE + AP_COUNTER, %eax
        cmp %ebx, %eax
        je 2f
        pause
        loop 1b
2:      movzwl AP_TRAMPOLINE + AP_COUNTER, %eax
        call putdec
        mov $0x20, %al
        call putc
        movzwl AP_TRAMPOLINE + AP_COUNTER, %eax
        cmp %ebx, %eax
        sete %al
        pop %edi
        pop %esi
        pop %ecx
        pop %ebx
        ret

/* Copied to AP_TRAMPOLINE; runs in real mode with CS = 0x0700, IP = 0. */
        .code16
ap_trampoline:
        cli
        mov %cs, %ax
        mov %ax, %ds
        lock incw AP_COUNTER
1:      hlt
        jmp 1b
ap_trampoline_end:
        .code32

/* ================================================================ VT-d interrupt remapping */

/* vtd_interrupt_remapping (VT-d 5.1, 6.5.2): queued invalidation on, IRT with one IRTE for
   edu (source-id verified), IRE on; a compatibility-format MSI is then blocked (fault 0x25),
   a remappable-format one arrives as the IRTE's vector 0x41 */
vtd_interrupt_remapping:
        mov $s_qi, %esi
        call puts
        movl $inv_queue, VTD_BASE + 0x90    /* IQA: 4 KiB queue (QS 0), 128-bit descriptors */
        movl $0, VTD_BASE + 0x94
        movl $0, VTD_BASE + 0x88            /* IQT = 0 */
        movl $0, VTD_BASE + 0x8C
        mov $0x04000000, %eax               /* GCMD.QIE */
        call vtd_gcmd
        mov VTD_BASE + 0x1C, %eax
        test $0x04000000, %eax
        setnz %al
        call check

        mov $s_irte, %esi
        call puts
        /* IRTE 5: P, vector 0x41, fixed, physical, destination APIC 0; SVT 01 = verify SID */
        movl $(1 | (0x41 << 16)), irt + 5 * 16
        movl $0, irt + 5 * 16 + 4
        mov edu_bdf, %eax
        or $(1 << 18), %eax
        mov %eax, irt + 5 * 16 + 8
        movl $0, irt + 5 * 16 + 12
        movl $irt + 3, VTD_BASE + 0xB8      /* IRTA: table, S = 3 (16 entries), xAPIC */
        movl $0, VTD_BASE + 0xBC
        mov $0x01000000, %eax               /* GCMD.SIRTP */
        call vtd_gcmd
        call vtd_qi_iec_global              /* invalidate the interrupt entry cache */
        mov $0x02000000, %eax               /* GCMD.IRE */
        call vtd_gcmd
        mov VTD_BASE + 0x1C, %eax
        test $0x02000000, %eax              /* GSTS.IRES */
        setnz %al
        call check

        /* compatibility-format MSI with IRE on and CFI off: blocked, fault reason 0x25 */
        mov $s_cfi_blocked, %esi
        call puts
        mov $0xFEE00000, %eax
        mov $0x40, %ecx
        call edu_program_msi
        mov $irq_count_40, %ebx
        call edu_raise_and_wait
        xor $1, %al                         /* no interrupt may arrive */
        mov %al, %bl
        call vtd_pop_fault
        cmp $0x25, %eax
        sete %al
        and %bl, %al
        call check

        /* remappable format: handle 5 in address bits 19:5, bit 4 set, SHV 0 (VT-d 5.1.2.2) */
        mov $s_remapped, %esi
        call puts
        mov $(0xFEE00000 | (5 << 5) | (1 << 4)), %eax
        xor %ecx, %ecx
        call edu_program_msi
        mov $irq_count_41, %ebx
        call edu_raise_and_wait
        call check

        /* the IOAPIC through remapping: IRTE 6 (level, vector 0x43, SID = the IOAPIC's
           0xFF00 from the DMAR device scope), entry in remappable format (VT-d 5.1.5.1) */
        mov $s_ioapic_ir, %esi
        call puts
        movl $(1 | (1 << 4) | (0x43 << 16)), irt + 6 * 16   /* P, TM level, vector 0x43 */
        movl $0, irt + 6 * 16 + 4
        movl $(0xFF00 | (1 << 18)), irt + 6 * 16 + 8        /* SID 0xFF00, SVT 01 */
        movl $0, irt + 6 * 16 + 12
        call vtd_qi_iec_global
        mov $((6 << 17) | (1 << 16)), %ebx  /* handle[14:0] in 63:49, format bit 48 */
        mov $(0x8000 | 0x43), %ecx          /* level; vector = the IRTE's, for EOI matching */
        mov $irq_count_43, %edx
        call intx_test
        call check
        ret

/* vtd_qi_iec_global: IEC global invalidation + wait descriptor with status write */
vtd_qi_iec_global:
        push %eax
        push %ebx
        push %ecx
        movl $0, qi_status
        mov VTD_BASE + 0x88, %ebx           /* IQT (byte offset of the tail) */
        and $0x7FFF0, %ebx
        movl $0x4, inv_queue(%ebx)          /* interrupt entry cache invalidate, global */
        movl $0, inv_queue + 4(%ebx)
        movl $0, inv_queue + 8(%ebx)
        movl $0, inv_queue + 12(%ebx)
        add $16, %ebx
        and $0xFFF, %ebx
        movl $0x25, inv_queue(%ebx)         /* invalidation wait: type 5, SW (bit 5) */
        movl $1, inv_queue + 4(%ebx)        /* status data */
        movl $qi_status, inv_queue + 8(%ebx) /* status address */
        movl $0, inv_queue + 12(%ebx)
        add $16, %ebx
        and $0xFFF, %ebx
        mov %ebx, VTD_BASE + 0x88           /* IQT */
        mov $100000, %ecx
1:      cmpl $1, qi_status
        je 2f
        loop 1b
2:      pop %ecx
        pop %ebx
        pop %eax
        ret

/* vtd_pop_fault: EAX = reason of the first recorded fault (cleared), or -1 */
vtd_pop_fault:
        push %ebx
        push %ecx
        push %esi
        mov vtd_frcd, %ebx
        mov vtd_nfr, %ecx
1:      testl $0x80000000, 12(%ebx)
        jnz 2f
        add $16, %ebx
        loop 1b
        mov $-1, %eax
        jmp 9f
2:      mov $s_frcd, %esi
        call puts
        movzbl 12(%ebx), %eax
        call puthex
        mov $s_fault_ep, %esi
        call puts
        movzwl 8(%ebx), %eax
        call putbdf
        mov $s_close, %esi
        call puts
        movzbl 12(%ebx), %eax
        movl $0x80000000, 12(%ebx)
        movl $1, VTD_BASE + 0x34
9:      pop %esi
        pop %ecx
        pop %ebx
        ret

/* ================================================================ data */

        .section .rodata
s_banner:       .asciz "viommu built-in guest\n"
s_magic:        .asciz "boot: multiboot magic "
s_meminfo:      .asciz "boot: mem_upper "
s_mib_mmap:     .asciz " MiB, memory map "
s_entries:      .asciz " entries "
s_fwcfg:        .asciz "fw_cfg: signature QEMU"
s_cpus:         .asciz ", cpus "
s_ram:          .asciz ", ram "
s_mib:          .asciz " MiB "
s_edu:          .asciz "pci: edu "
s_absent:       .asciz "absent "
s_at:           .asciz " bar0 "
s_id:           .asciz " id "
s_identity:     .asciz "dma: no vIOMMU, identity round trip "
s_viommu:       .asciz "pci: virtio-iommu "
s_caps:         .asciz " capabilities "
s_bringup:      .asciz "virtio-iommu: features VERSION_1|MAP_UNMAP, queues up "
s_unattached:   .asciz "dma: unattached endpoint is blocked "
s_attach:       .asciz "virtio-iommu: ATTACH edu to domain 1"
s_map:          .asciz "virtio-iommu: MAP iova 0x08000000 -> page"
s_dma_in:       .asciz "dma: edu reads and writes through the mapping "
s_unmapped:     .asciz "dma: unmapped iova 0x08001000 faults, eventq MSI-X interrupt (vector 0x45) "
s_unmap:        .asciz "virtio-iommu: UNMAP iova 0x08000000"
s_after_unmap:  .asciz "dma: after UNMAP the old iova faults (event + MSI-X), memory untouched "
s_vtd:          .asciz "vt-d: unit at 0xfed90000, VER "
s_vtd_tables:   .asciz "vt-d: root/context/second-stage tables, SRTP, global invalidation, TE "
s_vtd_unmapped: .asciz "dma: iova 0x08001000 without a PTE faults, fault event interrupt (vector 0x44) "
s_vtd_unmap:    .asciz "vt-d: clear PTE + IOTLB invalidation, old iova faults, memory untouched "
s_frcd:         .asciz "[FRCD reason "
s_msi:          .asciz "msi: edu interrupt through the local APIC, vector 0x40 "
s_intx:         .asciz "intx: edu INTA# through the IOAPIC (level, vector 0x42), EOI clears remote IRR: "
s_rte:          .asciz "RTE "
s_ioapic_ir:    .asciz "vt-d: IOAPIC INTx remapped (IRTE 6, level, vector 0x43), EOI clears remote IRR: "
s_smp:          .asciz "smp: INIT-SIPI-SIPI to "
s_smp2:         .asciz " application processors, checked in: "
s_exception:    .asciz "\nunexpected CPU exception\nverdict: FAIL\n"
s_qi:           .asciz "vt-d: queued invalidation on "
s_irte:         .asciz "vt-d: IRT with IRTE 5 (vector 0x41, SID-verified), SIRTP, IEC invalidation, IRE "
s_cfi_blocked:  .asciz "vt-d: compatibility-format MSI is blocked "
s_remapped:     .asciz "vt-d: remappable MSI (handle 5) arrives as vector 0x41 "
s_status:       .asciz " status "
s_fault:        .asciz "[fault reason "
s_fault_ep:     .asciz " endpoint "
s_fault_addr:   .asciz " address "
s_close:        .asciz "] "
s_ok:           .asciz "... ok\n"
s_bad:          .asciz "... FAIL\n"
s_summary:      .asciz "summary: "
s_passed:       .asciz " passed, "
s_failed:       .asciz " failed\n"
s_pass:         .asciz "verdict: PASS\n"
s_fail:         .asciz "verdict: FAIL\n"

        .data
        .align 4
edu_bdf:        .long -1
viommu_bdf:     .long -1
n_pass:         .long 0
n_fail:         .long 0
        .align 8
idt_descriptor: .word 256 * 8 - 1
                .long idt

        .bss
        .align 4096
src_page:       .skip 4096
dst_page:       .skip 4096
rq_desc:        .skip 4096                  /* desc 0..127, avail 128.., used 256.. */
eq_desc:        .skip 4096
stack:          .skip 16384
stack_top:
        .align 16
req_buf:        .skip 64
tail_buf:       .skip 16
event_buf:      .skip 64
boot_eax:       .skip 4
boot_ebx:       .skip 4
edu_mmio:       .skip 4
common_cfg:     .skip 4
notify_base:    .skip 4
notify_mult:    .skip 4
device_cfg:     .skip 4
rq_notify:      .skip 4
eq_notify:      .skip 4
rq_avail_idx:   .skip 2
eq_avail_idx:   .skip 2
eq_used_seen:   .skip 2
        .align 4
vtd_iva:        .skip 4
vtd_frcd:       .skip 4
vtd_nfr:        .skip 4
vtd_aw:         .skip 4
vtd_top:        .skip 4
irq_count_40:   .skip 4
irq_count_41:   .skip 4
irq_count_42:   .skip 4
irq_count_43:   .skip 4
irq_count_44:   .skip 4
irq_count_45:   .skip 4
msix_ok:        .skip 4
msi_control:    .skip 4
irq_resume:     .skip 4
wait_old:       .skip 4
qi_status:      .skip 4
        .align 8
idt:            .skip 256 * 8
        .align 4096
root_table:     .skip 4096
ctx_table:      .skip 4096
sl_pml4:        .skip 4096
sl_pdpt:        .skip 4096
sl_pd:          .skip 4096
sl_pt:          .skip 4096
irt:            .skip 4096
inv_queue:      .skip 4096
