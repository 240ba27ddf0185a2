//! PVH boot: load the image, write `hvm_start_info` (memory map, command line) and put the
//! vCPU in the state the PVH ABI promises: 32-bit protected mode, paging off, flat
//! segments, EBX = physical address of the start info.
//!
//! Boot data layout (guest-physical, all below 1 MiB):
//! | what | address |
//! | --- | --- |
//! | boot GDT (null, code, data, TSS) | 0x500 |
//! | boot IDT (empty) | 0x520 |
//! | `hvm_start_info` | 0x6000 |
//! | memory map (`hvm_memmap_table_entry`s) | 0x7000 |
//! | module list (`hvm_modlist_entry`: the initrd) | 0x7800 |
//! | command line | 0x20000 (at most 4 KiB) |
//! | initrd (if any) | the top of RAM, page-aligned |

use std::io::Cursor;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::machine::elf_image::{ElfClass, ElfImage};
use crate::machine::memory::GuestRam;

pub const BOOT_GDT_ADDR: u64 = 0x500;
pub const BOOT_IDT_ADDR: u64 = 0x520;
pub const START_INFO_ADDR: u64 = 0x6000;
pub const MEMMAP_ADDR: u64 = 0x7000;
pub const MODLIST_ADDR: u64 = 0x7800;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line, including its terminating NUL.
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional memory reported as RAM (the EBDA would start here on a PC).
const LOW_RAM_END: u64 = 0x9_fc00;
const HIGH_RAM_START: u64 = 0x10_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the command line is {len} bytes; PVH guests accept at most {} bytes", CMDLINE_MAX - 1)]
    CmdlineTooLong { len: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("loading the ELF image failed: {0}")]
    Load(String),
    #[error("writing boot data into guest memory failed: {0}")]
    Write(String),
    #[error(
        "the initrd ({size} bytes) does not fit in guest RAM above the kernel image (which \
         ends at {image_end:#x}); give the guest more memory with --mem"
    )]
    InitrdTooBig { size: u64, image_end: u64 },
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of RAM, above the image
/// (which ends at `image_end`). Linux reserves the range itself when it starts.
pub fn initrd_address(mem_bytes: u64, size: u64, image_end: u64) -> Result<u64, BootError> {
    let too_big = BootError::InitrdTooBig { size, image_end };
    let addr = mem_bytes.checked_sub(size).ok_or(too_big)? & !0xfff;
    let image_end = (image_end + 0xfff) & !0xfff;
    if addr < image_end.max(HIGH_RAM_START) {
        return Err(BootError::InitrdTooBig { size, image_end });
    }
    Ok(addr)
}

/// Copies the image's segments into guest memory.
pub fn load_image(mem: &GuestRam, image: &[u8], elf: &ElfImage) -> Result<(), BootError> {
    match elf.class {
        // linux-loader reads ELF64 (vmlinux) images; `elf` has already been validated
        // against the file and RAM, so its errors here would be internal ones.
        ElfClass::Elf64 => {
            Elf::load(mem, None, &mut Cursor::new(image), None)
                .map_err(|e| BootError::Load(e.to_string()))?;
        }
        // linux-loader has no ELF32 reader: copy the validated segments directly.
        ElfClass::Elf32 => {
            for s in &elf.segments {
                let start = s.offset as usize;
                let bytes = &image[start..start + s.file_size as usize];
                mem.write_slice(bytes, GuestAddress(s.paddr))
                    .map_err(|e| BootError::Load(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// The PVH memory map for `mem_bytes` of RAM.
pub fn memory_map(mem_bytes: u64) -> Vec<hvm_memmap_table_entry> {
    vec![
        hvm_memmap_table_entry {
            addr: 0,
            size: LOW_RAM_END,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIGH_RAM_START,
            size: mem_bytes - HIGH_RAM_START,
            type_: E820_RAM,
            reserved: 0,
        },
    ]
}

/// Writes the command line, memory map, start info and boot GDT, and the initrd (given as
/// its bytes and its guest-physical address, from `initrd_address`) with its module entry.
pub fn write_boot_info(
    mem: &GuestRam,
    mem_bytes: u64,
    cmdline: &str,
    initrd: Option<(&[u8], u64)>,
) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let write_err = |e: vm_memory::GuestMemoryError| BootError::Write(e.to_string());
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    mem.write_slice(&cmd, GuestAddress(CMDLINE_ADDR))
        .map_err(write_err)?;

    let map = memory_map(mem_bytes);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((bytes, addr)) = initrd {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(write_err)?;
        // hvm_modlist_entry: paddr, size, cmdline_paddr (0: none), reserved.
        let mut entry = [0u8; 32];
        entry[..8].copy_from_slice(&addr.to_le_bytes());
        entry[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        mem.write_slice(&entry, GuestAddress(MODLIST_ADDR))
            .map_err(write_err)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(START_INFO_ADDR));
    params.set_sections(&map, GuestAddress(MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestRam>(&params, mem)
        .map_err(|e| BootError::Write(e.to_string()))?;

    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(write_err)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
        .map_err(write_err)?;
    Ok(())
}

/// A GDT descriptor from flags (access byte in bits 0-7, flags nibble in 12-15), base, limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xffff_ffff), // 32-bit code, execute/read, accessed
        gdt_entry(0xc093, 0, 0xffff_ffff), // 32-bit data, read/write, accessed
        gdt_entry(0x008b, 0, 0x67),        // 32-bit TSS, busy
    ]
}

fn segment(selector: u16, type_: u8, limit: u32, s: u8, db: u8, g: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l: 0,
        g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for PVH entry, starting from the vCPU's current ones.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = segment(CODE_SELECTOR, 0xb, 0xffff_ffff, 1, 1, 1);
    let data = segment(DATA_SELECTOR, 0x3, 0xffff_ffff, 1, 1, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR, 0xb, 0x67, 0, 0, 0);
    sregs.ldt = segment(0, 0x2, 0xffff, 0, 0, 0);
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (boot_gdt().len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers for PVH entry.
pub fn pvh_regs(entry: u32) -> kvm_regs {
    kvm_regs {
        rip: u64::from(entry),
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    }
}

/// FPU state after reset.
pub fn reset_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory;

    #[test]
    fn boot_info_is_where_pvh_guests_look() {
        let mem = memory::allocate(64 << 20).unwrap();
        write_boot_info(&mem, 64 << 20, "console=ttyS0", None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 2);
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_ADDR + 24)).unwrap();
        assert_eq!(
            (e.addr, e.size),
            (HIGH_RAM_START, (64 << 20) - HIGH_RAM_START)
        );
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn initrd_goes_to_the_top_of_ram_as_module_zero() {
        let mem = memory::allocate(8 << 20).unwrap();
        let initrd = vec![0xa5u8; 5000];
        let addr = initrd_address(8 << 20, 5000, 0x20_0000).unwrap();
        assert_eq!(addr, ((8 << 20) - 5000) & !0xfff);
        write_boot_info(&mem, 8 << 20, "", Some((&initrd, addr))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, MODLIST_ADDR));
        let paddr: u64 = mem.read_obj(GuestAddress(MODLIST_ADDR)).unwrap();
        let size: u64 = mem.read_obj(GuestAddress(MODLIST_ADDR + 8)).unwrap();
        assert_eq!((paddr, size), (addr, 5000));
        let mut back = vec![0u8; 5000];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert_eq!(back, initrd);
        // Overlapping the image, or larger than RAM: refused.
        assert!(matches!(
            initrd_address(8 << 20, 7 << 20, 0x20_0000),
            Err(BootError::InitrdTooBig { .. })
        ));
        assert!(initrd_address(8 << 20, 9 << 20, 0x20_0000).is_err());
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let mem = memory::allocate(4 << 20).unwrap();
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            write_boot_info(&mem, 4 << 20, &long, None),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn gdt_entries_encode_flat_segments() {
        assert_eq!(gdt_entry(0xc09b, 0, 0xffff_ffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xffff_ffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn elf32_and_elf64_images_load() {
        use crate::machine::elf_image::{parse, testing::tiny_elf};
        for class in [ElfClass::Elf32, ElfClass::Elf64] {
            let mem = memory::allocate(4 << 20).unwrap();
            let bytes = tiny_elf(class, true, 16);
            let elf = parse(&bytes, 4 << 20).unwrap();
            load_image(&mem, &bytes, &elf).unwrap();
            let b: u8 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
            assert_eq!(b, 0xf4, "{class:?}");
        }
    }
}
