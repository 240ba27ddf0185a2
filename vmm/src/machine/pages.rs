//! Guest memory by pages, for checkpoints: capturing pages, writing them back, the pages the
//! guest dirtied (KVM dirty logging), and a compact binary encoding.
//!
//! A `PageSet` is either *full* (every page of RAM; absent pages are zero) or a *delta*
//! (only the listed pages changed; a page that became zero is listed as `Page::Zero`).
//!
//! The VMM itself writes guest RAM only while building the machine (image, boot
//! information), before the first checkpoint (the boot state) is taken; at run time guest
//! RAM changes only through the vCPU, which KVM's dirty log sees. A device that writes
//! guest RAM (DMA) must add its pages through `Machine::note_vmm_write`.

use std::collections::BTreeMap;

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::machine::memory::GuestRam;

pub const PAGE_SIZE: usize = 4096;
const PAGE_SHIFT: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("KVM_GET_DIRTY_LOG failed: {0}")]
    DirtyLog(kvm_ioctls::Error),
    #[error("guest page {page:#x} is outside RAM")]
    OutsideRam { page: u32 },
    #[error("page data is damaged: {0}")]
    Decode(String),
}

/// One page's content.
#[derive(Clone, PartialEq, Eq)]
pub enum Page {
    Zero,
    Data(Box<[u8]>),
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Page::Zero => write!(f, "Zero"),
            Page::Data(_) => write!(f, "Data"),
        }
    }
}

/// Pages by page number (guest-physical address >> 12).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    pub full: bool,
    pub pages: BTreeMap<u32, Page>,
}

/// The number of pages of `mem`.
pub fn page_count(mem: &GuestRam) -> u32 {
    let bytes: u64 = mem
        .iter()
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0);
    (bytes >> PAGE_SHIFT) as u32
}

fn read_page(mem: &GuestRam, page: u32) -> Result<Page, PagesError> {
    let mut buf = vec![0u8; PAGE_SIZE].into_boxed_slice();
    mem.read_slice(&mut buf, GuestAddress(u64::from(page) << PAGE_SHIFT))
        .map_err(|_| PagesError::OutsideRam { page })?;
    Ok(if buf.iter().all(|&b| b == 0) {
        Page::Zero
    } else {
        Page::Data(buf)
    })
}

impl PageSet {
    /// Every non-zero page of `mem`.
    pub fn capture_full(mem: &GuestRam) -> Result<PageSet, PagesError> {
        let mut pages = BTreeMap::new();
        for page in 0..page_count(mem) {
            if let Page::Data(d) = read_page(mem, page)? {
                pages.insert(page, Page::Data(d));
            }
        }
        Ok(PageSet { full: true, pages })
    }

    /// The current content of `pages` of `mem`.
    pub fn capture(
        mem: &GuestRam,
        pages: impl IntoIterator<Item = u32>,
    ) -> Result<PageSet, PagesError> {
        let mut set = BTreeMap::new();
        for page in pages {
            set.insert(page, read_page(mem, page)?);
        }
        Ok(PageSet {
            full: false,
            pages: set,
        })
    }

    /// Bytes of page data held (the in-memory cost).
    pub fn data_bytes(&self) -> usize {
        self.pages
            .values()
            .filter(|p| matches!(p, Page::Data(_)))
            .count()
            * PAGE_SIZE
    }

    /// Encodes as: u8 full, u32 count, then per page u32 number, u8 kind (0 zero, 1 data),
    /// 4096 bytes for data. Little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.full));
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (&n, page) in &self.pages {
            out.extend_from_slice(&n.to_le_bytes());
            match page {
                Page::Zero => out.push(0),
                Page::Data(d) => {
                    out.push(1);
                    out.extend_from_slice(d);
                }
            }
        }
    }

    /// Decodes what `encode` wrote; returns the set and the bytes consumed.
    pub fn decode(bytes: &[u8]) -> Result<(PageSet, usize), PagesError> {
        let bad = |what: &str, at: usize| PagesError::Decode(format!("{what} at byte {at}"));
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Result<&[u8], PagesError> {
            let s = bytes
                .get(*at..*at + n)
                .ok_or_else(|| bad("truncated page data", *at))?;
            *at += n;
            Ok(s)
        };
        let full = match take(&mut at, 1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(bad("bad full flag", 0)),
        };
        let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
        let mut pages = BTreeMap::new();
        for _ in 0..count {
            let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
            let kind_at = at;
            let page = match take(&mut at, 1)?[0] {
                0 => Page::Zero,
                1 => Page::Data(take(&mut at, PAGE_SIZE)?.into()),
                _ => return Err(bad("bad page kind", kind_at)),
            };
            if pages.insert(n, page).is_some() {
                return Err(bad("duplicate page", kind_at));
            }
        }
        Ok((PageSet { full, pages }, at))
    }
}

/// Writes `page` into guest page `n`.
pub fn write_page(mem: &GuestRam, n: u32, page: &Page) -> Result<(), PagesError> {
    static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    let data: &[u8] = match page {
        Page::Zero => &ZERO,
        Page::Data(d) => d,
    };
    mem.write_slice(data, GuestAddress(u64::from(n) << PAGE_SHIFT))
        .map_err(|_| PagesError::OutsideRam { page: n })
}

/// The pages the guest wrote since the last call (KVM_GET_DIRTY_LOG, which also clears
/// the log), as page numbers.
pub fn take_dirty_pages(vm: &VmFd, mem: &GuestRam) -> Result<Vec<u32>, PagesError> {
    let mut out = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let bitmap = vm
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(PagesError::DirtyLog)?;
        let first = (region.start_addr().0 >> PAGE_SHIFT) as u32;
        for (word_index, mut word) in bitmap.into_iter().enumerate() {
            while word != 0 {
                let bit = word.trailing_zeros();
                word &= word - 1;
                out.push(first + word_index as u32 * 64 + bit);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory;

    #[test]
    fn capture_encode_decode_round_trip() {
        let mem = memory::allocate(4 * memory::MIB).expect("alloc");
        mem.write_slice(b"hello", GuestAddress(0x1000)).expect("w");
        mem.write_slice(b"x", GuestAddress(0x3f_f000)).expect("w");
        let full = PageSet::capture_full(&mem).expect("full");
        assert_eq!(full.pages.keys().copied().collect::<Vec<_>>(), [1, 0x3ff]);
        let delta = PageSet::capture(&mem, [1, 2]).expect("delta");
        assert_eq!(delta.pages.get(&2), Some(&Page::Zero));
        for set in [full, delta] {
            let mut bytes = Vec::new();
            set.encode(&mut bytes);
            let (back, used) = PageSet::decode(&bytes).expect("decode");
            assert_eq!(used, bytes.len());
            assert_eq!(back, set);
            for cut in [0, 1, 5, bytes.len() - 1] {
                assert!(PageSet::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn pages_outside_ram_are_errors() {
        let mem = memory::allocate(2 * memory::MIB).expect("alloc");
        assert!(matches!(
            PageSet::capture(&mem, [0x1000]),
            Err(PagesError::OutsideRam { page: 0x1000 })
        ));
        assert!(write_page(&mem, 0x1000, &Page::Zero).is_err());
    }
}
