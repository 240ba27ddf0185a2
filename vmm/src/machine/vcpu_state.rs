//! The whole architectural state of the vCPU, saved and restored through KVM's ioctls, for
//! checkpoints.
//!
//! What is saved: general registers, special registers (segments, control registers, EFER,
//! descriptor tables), the XSAVE area (x87/SSE/AVX state), XCR0, debug registers, pending
//! events (interrupt shadow, NMI, exceptions), the MP state, and the MSRs a guest kernel
//! programs (SYSCALL/SYSENTER targets, KERNEL_GS_BASE, PAT, MTRR default type, TSC_AUX,
//! MISC_ENABLE) as far as this KVM exposes them. Not saved: the TSC (guests never read the
//! hardware TSC under ttvm's clock: RDTSC/RDTSCP/RDMSR(TSC) are emulated) and the local
//! APIC (ttvm's machine has none).
//!
//! Restore order follows KVM's dependencies: MP state, special registers (mode), general
//! registers, XSAVE/XCRs, debug registers, MSRs, and pending events last (they are
//! validated against the mode).

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// The MSRs worth saving, if this KVM lists them (KVM_GET_MSR_INDEX_LIST).
const SAVED_MSRS: &[u32] = &[
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x2ff,       // IA32_MTRR_DEF_TYPE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM saved {done} of {asked} MSRs")]
    PartialMsrs { done: usize, asked: usize },
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl { op, source }
}

/// One saved MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMsr {
    pub index: u32,
    pub value: u64,
}

/// Everything KVM holds for the vCPU that the guest can observe.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area (`kvm_xsave.region`, 4096 bytes).
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub msrs: Vec<SavedMsr>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The subset of `SAVED_MSRS` this KVM can save and restore.
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, VcpuStateError> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    let listed = listed.as_slice();
    Ok(SAVED_MSRS
        .iter()
        .copied()
        .filter(|m| listed.contains(m))
        .collect())
}

impl VcpuState {
    /// Reads the state of `vcpu`; `msrs` from `saveable_msrs`.
    pub fn save(vcpu: &VcpuFd, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut wrapper =
            Msrs::from_entries(&entries).map_err(|e| VcpuStateError::MsrList(format!("{e:?}")))?;
        let done = vcpu.get_msrs(&mut wrapper).map_err(ioctl("KVM_GET_MSRS"))?;
        if done != entries.len() {
            return Err(VcpuStateError::PartialMsrs {
                done,
                asked: entries.len(),
            });
        }
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            xsave: vcpu
                .get_xsave()
                .map_err(ioctl("KVM_GET_XSAVE"))?
                .region
                .to_vec(),
            xcrs: vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
            events: vcpu
                .get_vcpu_events()
                .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
            msrs: wrapper
                .as_slice()
                .iter()
                .map(|e| SavedMsr {
                    index: e.index,
                    value: e.data,
                })
                .collect(),
        })
    }

    /// Writes this state into `vcpu`.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        vcpu.set_mp_state(self.mp_state)
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(ioctl("KVM_SET_REGS"))?;
        let mut xsave = kvm_xsave::default();
        let n = xsave.region.len().min(self.xsave.len());
        xsave.region[..n].copy_from_slice(&self.xsave[..n]);
        // SAFETY: KVM_SET_XSAVE reads the vCPU's uabi xsave size from the pointer. ttvm
        // never asks for dynamic XSAVE features (ARCH_REQ_XCOMP_GUEST_PERM, e.g. AMX), so
        // that size is the legacy 4096 bytes of `kvm_xsave`, which `xsave` is.
        unsafe { vcpu.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.value,
                ..Default::default()
            })
            .collect();
        let wrapper =
            Msrs::from_entries(&entries).map_err(|e| VcpuStateError::MsrList(format!("{e:?}")))?;
        let done = vcpu.set_msrs(&wrapper).map_err(ioctl("KVM_SET_MSRS"))?;
        if done != entries.len() {
            return Err(VcpuStateError::PartialMsrs {
                done,
                asked: entries.len(),
            });
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
