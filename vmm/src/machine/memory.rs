//! Guest RAM: size parsing, allocation (vm-memory) and registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 64 * MIB;
/// Smallest RAM ttvm accepts: boot data below 1 MiB plus room for an image above it.
pub const MIN_MEM: u64 = 2 * MIB;
/// Largest RAM: one flat region below the PC's 32-bit MMIO hole (3 GiB..4 GiB).
pub const MAX_MEM: u64 = 3 * GIB;

/// Guest RAM type used throughout ttvm.
pub type GuestRam = GuestMemoryMmap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("memory size {text:?} is not a size: use a number with an optional K, M or G suffix (e.g. 64M, 1G)")]
    BadSize { text: String },
    #[error("memory size {bytes} bytes is too small: ttvm needs at least {} MiB", MIN_MEM / MIB)]
    TooSmall { bytes: u64 },
    #[error("memory size {bytes} bytes is too large: ttvm supports at most {} GiB", MAX_MEM / GIB)]
    TooLarge { bytes: u64 },
    #[error("memory size {bytes} bytes is not a multiple of the 4 KiB page size")]
    Unaligned { bytes: u64 },
    #[error("cannot allocate {bytes} bytes of guest memory: {reason}")]
    Allocate { bytes: u64, reason: String },
    #[error("KVM refused the guest memory region: {0}")]
    Register(kvm_ioctls::Error),
}

/// Parses `64M`, `1G`, `512K`, `65536`, `64MiB`, `2g` (binary units).
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = || MemoryError::BadSize {
        text: text.to_string(),
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Checks a RAM size against what ttvm supports.
pub fn validate_size(bytes: u64) -> Result<u64, MemoryError> {
    if bytes < MIN_MEM {
        return Err(MemoryError::TooSmall { bytes });
    }
    if bytes > MAX_MEM {
        return Err(MemoryError::TooLarge { bytes });
    }
    if !bytes.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned { bytes });
    }
    Ok(bytes)
}

/// Allocates `bytes` of zeroed guest RAM at guest-physical 0.
pub fn allocate(bytes: u64) -> Result<GuestRam, MemoryError> {
    let size =
        usize::try_from(validate_size(bytes)?).map_err(|_| MemoryError::TooLarge { bytes })?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| MemoryError::Allocate {
        bytes,
        reason: e.to_string(),
    })
}

/// Makes every region of `mem` guest RAM of `vm`, slot by slot.
pub fn register(vm: &VmFd, mem: &GuestRam, log_dirty: bool) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate {
                bytes: region.len(),
                reason: e.to_string(),
            })?;
        let flags = if log_dirty {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the machine keeps alive
        // (and unmodified in layout) for as long as the VM exists.
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in [
            "",
            "M",
            "64X",
            "-1M",
            "1.5G",
            "99999999999999999999G",
            "64 M M",
        ] {
            assert!(
                matches!(parse_size(bad), Err(MemoryError::BadSize { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_are_validated() {
        assert_eq!(validate_size(64 * MIB), Ok(64 * MIB));
        assert!(matches!(
            validate_size(MIB),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            validate_size(4 * GIB),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(matches!(
            validate_size(64 * MIB + 1),
            Err(MemoryError::Unaligned { .. })
        ));
    }
}
