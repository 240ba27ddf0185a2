//! Guest-virtual to guest-physical translation, done in the VMM as the CPU would (no
//! KVM_TRANSLATE ioctl: this runs before every single step). Handles no paging, 32-bit
//! paging (with 4 MiB pages), PAE and 4/5-level long-mode paging. Permission bits are not
//! checked: this is for reading what the guest would fetch or access, not for faults.

use vm_memory::{Bytes, GuestAddress};

use crate::machine::memory::GuestRam;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The registers that decide translation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mmu {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl Mmu {
    pub fn from_sregs(s: &kvm_bindings::kvm_sregs) -> Self {
        Mmu {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }

    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }

    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// The guest-physical address of linear address `va`, or None if it is not mapped.
    pub fn translate(&self, mem: &GuestRam, va: u64) -> Option<u64> {
        if !self.paging() {
            return Some(va & 0xffff_ffff);
        }
        let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).ok();
        if self.long_mode() {
            let levels: u32 = if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
            let mut table = self.cr3 & ADDR_MASK;
            for level in (1..=levels).rev() {
                let shift = 12 + 9 * (level - 1);
                let entry = read(table + ((va >> shift) & 0x1ff) * 8)?;
                if entry & PRESENT == 0 {
                    return None;
                }
                if level == 1 || ((level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0) {
                    let page_mask = (1u64 << shift) - 1;
                    return Some((entry & ADDR_MASK & !page_mask) | (va & page_mask));
                }
                table = entry & ADDR_MASK;
            }
            None
        } else if self.cr4 & CR4_PAE != 0 {
            let va = va & 0xffff_ffff;
            let pdpte = read((self.cr3 & 0xffff_ffe0) + (va >> 30) * 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            let pde = read((pdpte & ADDR_MASK) + ((va >> 21) & 0x1ff) * 8)?;
            if pde & PRESENT == 0 {
                return None;
            }
            if pde & PAGE_SIZE_BIT != 0 {
                return Some((pde & ADDR_MASK & !0x1f_ffff) | (va & 0x1f_ffff));
            }
            let pte = read((pde & ADDR_MASK) + ((va >> 12) & 0x1ff) * 8)?;
            (pte & PRESENT != 0).then_some((pte & ADDR_MASK) | (va & 0xfff))
        } else {
            let read32 = |addr: u64| mem.read_obj::<u32>(GuestAddress(addr)).ok().map(u64::from);
            let va = va & 0xffff_ffff;
            let pde = read32((self.cr3 & 0xffff_f000) + (va >> 22) * 4)?;
            if pde & PRESENT == 0 {
                return None;
            }
            if pde & PAGE_SIZE_BIT != 0 && self.cr4 & CR4_PSE != 0 {
                // 4 MiB page; bits 13-20 hold physical address bits 32-39 (PSE-36).
                let high = ((pde >> 13) & 0xff) << 32;
                return Some(high | (pde & 0xffc0_0000) | (va & 0x3f_ffff));
            }
            let pte = read32((pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4)?;
            (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (va & 0xfff))
        }
    }

    /// Reads up to `buf.len()` bytes at linear address `va`, page by page; returns how many
    /// could be read (stops at the first unmapped or non-RAM page).
    pub fn read_virt(&self, mem: &GuestRam, va: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let addr = va.wrapping_add(done as u64);
            let Some(phys) = self.translate(mem, addr) else {
                break;
            };
            let in_page = (0x1000 - (addr & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            if mem
                .read_slice(&mut buf[done..done + n], GuestAddress(phys))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory;

    #[test]
    fn long_mode_4k_and_2m_pages() {
        let mem = memory::allocate(4 << 20).unwrap();
        // PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000: entry 0 a 2 MiB page at 0,
        // entry 1 -> PT at 0x4000 whose entry 5 maps VA 0x205000 to 0x9000.
        mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x83u64, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0x4003u64, GuestAddress(0x3008)).unwrap();
        mem.write_obj(0x9003u64, GuestAddress(0x4000 + 5 * 8))
            .unwrap();
        let mmu = Mmu {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        };
        assert_eq!(mmu.translate(&mem, 0x12_3456), Some(0x12_3456));
        assert_eq!(mmu.translate(&mem, 0x20_5abc), Some(0x9abc));
        assert_eq!(mmu.translate(&mem, 0x20_6000), None);
        assert_eq!(mmu.translate(&mem, 0x4000_0000), None);
    }

    #[test]
    fn no_paging_is_identity_and_reads_cross_pages() {
        let mem = memory::allocate(4 << 20).unwrap();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0xffe)).unwrap();
        let mmu = Mmu::default();
        let mut buf = [0u8; 4];
        assert_eq!(mmu.read_virt(&mem, 0xffe, &mut buf), 4);
        assert_eq!(buf, [1, 2, 3, 4]);
        // The last 4 bytes of RAM are read; the next page is outside RAM: the read stops.
        let mut buf = [0u8; 8];
        assert_eq!(mmu.read_virt(&mem, (4 << 20) - 4, &mut buf), 4);
        assert_eq!(mmu.read_virt(&mem, 4 << 20, &mut buf), 0);
    }
}

/// The code bytes at a vCPU's RIP, as the CPU would fetch them in its current mode.
#[derive(Debug, Clone, Copy)]
pub struct CodeAtRip {
    /// 16, 32 or 64.
    pub bitness: u32,
    /// The linear address of RIP (CS base added outside 64-bit mode).
    pub linear: u64,
    pub bytes: [u8; 15],
    /// How many of `bytes` could be read (fewer at the end of mapped memory).
    pub len: usize,
}

impl CodeAtRip {
    pub fn fetch(
        mem: &GuestRam,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> CodeAtRip {
        let mmu = Mmu::from_sregs(sregs);
        let bitness = crate::machine::fallback::code_bitness(sregs);
        let linear = if bitness == 64 {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
        };
        let mut bytes = [0u8; 15];
        let len = mmu.read_virt(mem, linear, &mut bytes);
        CodeAtRip {
            bitness,
            linear,
            bytes,
            len,
        }
    }

    pub fn code(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
