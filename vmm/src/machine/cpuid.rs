//! The guest's CPUID: a fixed template derived from what the host's KVM supports
//! (KVM_GET_SUPPORTED_CPUID), the same on every run on the same host, and recorded in traces.
//!
//! Derivation rules (every change here changes what guests see, so it is listed):
//! - one CPU: APIC ID 0, one logical processor, topology leaves (4, 0xB, 0x1F, 0x8000_0008
//!   core count, 0x8000_001E) report a single thread;
//! - no local APIC, x2APIC or TSC-deadline timer (interrupts come only from the PICs);
//! - hidden because ttvm cannot make them deterministic or this KVM cannot run them:
//!   MONITOR/MWAIT, WAITPKG (UMWAIT/TPAUSE), RDTSCP, RDPID, HLE/RTM (transactional memory
//!   aborts are timing-dependent), the architectural PMU (leaf 0xA) and AMD core/NB
//!   performance counters, TSC_ADJUST, thermal/power leaf 6, VMX/SMX, EST, TM/TM2, PDCM,
//!   DCA, ACPI thermal;
//! - no hypervisor leaves (0x4000_0000..): no kvmclock or other paravirtual clocks, whose
//!   values would come from the host behind the recorder's back. The "hypervisor present"
//!   bit (leaf 1 ECX 31) stays set: it is true.
//! - RDRAND/RDSEED and RDTSC stay visible: the single-step clock emulates them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

/// One CPUID leaf/subleaf as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Supported(kvm_ioctls::Error),
    #[error("building the CPUID table failed: {0}")]
    Build(String),
}

const fn bit(n: u32) -> u32 {
    1 << n
}

/// Applies the template rules to one host entry; `None` drops the leaf.
pub fn template_entry(mut e: CpuidEntry) -> Option<CpuidEntry> {
    match e.function {
        1 => {
            // APIC ID 0, one logical processor; keep the CLFLUSH line size and brand index.
            e.ebx &= 0x0000_ffff;
            e.ebx |= 1 << 16;
            e.ecx &= !(bit(3) // MONITOR/MWAIT
                | bit(5) // VMX
                | bit(6) // SMX
                | bit(7) // EST
                | bit(8) // TM2
                | bit(15) // PDCM
                | bit(18) // DCA
                | bit(21) // x2APIC
                | bit(24)); // TSC-deadline
            e.edx &= !(bit(9) // APIC
                | bit(22) // ACPI thermal
                | bit(28) // HTT
                | bit(29)); // TM
        }
        4 => {
            // Deterministic cache parameters: one core, one thread per cache.
            e.eax &= 0x0000_3fff;
        }
        5 | 6 | 0xa => {
            // MONITOR leaf, thermal/power, architectural PMU: all zero.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        7 if e.index == 0 => {
            e.ebx &= !(bit(1) // TSC_ADJUST
                | bit(4) // HLE
                | bit(11)); // RTM
            e.ecx &= !(bit(5) // WAITPKG
                | bit(22)); // RDPID
        }
        0xb | 0x1f => {
            // One thread: x2APIC ID 0.
            e.edx = 0;
            if e.index == 0 {
                e.ebx = e.ebx.min(1);
            }
        }
        0x4000_0000..=0x4fff_ffff => return None,
        0x8000_0001 => {
            e.ecx &= !(bit(23) // PerfCtrExtNB
                | bit(24) // PerfCtrExtCore ... (AMD numbering varies; both are counters)
                | bit(28)); // PerfCtrExtLLC
            e.edx &= !bit(27); // RDTSCP
        }
        0x8000_0008 => {
            e.ecx &= !0xff; // NC: one core
        }
        0x8000_001e => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
    Some(e)
}

/// The guest's CPUID template on this host.
pub fn host_template(kvm: &Kvm) -> Result<Vec<CpuidEntry>, CpuidError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)?;
    Ok(supported
        .as_slice()
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .filter_map(template_entry)
        .collect())
}

/// The template as KVM_SET_CPUID2 wants it.
pub fn to_kvm(entries: &[CpuidEntry]) -> Result<CpuId, CpuidError> {
    let raw: Vec<kvm_cpuid_entry2> = entries
        .iter()
        .map(|e| kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        })
        .collect();
    CpuId::from_entries(&raw).map_err(|e| CpuidError::Build(format!("{e:?}")))
}

/// Hides RDRAND (CPUID.1:ECX[30]) and RDSEED (CPUID.7.0:EBX[18]): under the pmu clock the
/// guest runs freely and KVM's API cannot trap them, so their values could not be recorded.
/// Guests that check CPUID (as they must) then take another source of randomness.
pub fn hide_untrappable_randomness(entries: &mut [CpuidEntry]) {
    for e in entries {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !bit(30),
            (7, 0) => e.ebx &= !bit(18),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, r: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            flags: 0,
            eax: r,
            ebx: r,
            ecx: r,
            edx: r,
        }
    }

    #[test]
    fn template_hides_apic_pmu_and_hypervisor_leaves() {
        let leaf1 = template_entry(entry(1, 0, u32::MAX)).unwrap();
        assert_eq!(leaf1.edx & bit(9), 0, "no APIC");
        assert_eq!(leaf1.ecx & bit(21), 0, "no x2APIC");
        assert_ne!(leaf1.ecx & bit(30), 0, "RDRAND stays (emulated)");
        assert_ne!(leaf1.ecx & bit(31), 0, "hypervisor bit stays");
        assert_eq!(leaf1.ebx >> 24, 0, "APIC ID 0");
        assert_eq!(template_entry(entry(0xa, 0, u32::MAX)).unwrap().eax, 0);
        assert!(template_entry(entry(0x4000_0001, 0, 1)).is_none());
        let ext = template_entry(entry(0x8000_0001, 0, u32::MAX)).unwrap();
        assert_eq!(ext.edx & bit(27), 0, "no RDTSCP");
        let l7 = template_entry(entry(7, 0, u32::MAX)).unwrap();
        assert_eq!(l7.ebx & bit(11), 0, "no RTM");
    }
}
