//! Probing how this KVM single-steps, instead of assuming one KVM's behaviour.
//!
//! On some KVMs (e.g. the nested software KVM of the project's machines) a single-step,
//! once armed with KVM_SET_GUEST_DEBUG, stays armed. On KVM with real hardware
//! virtualization it is implemented with the guest's trap flag, which KVM keeps only while
//! RIP equals the RIP at which single-step was armed; its instruction emulator and
//! interrupt delivery drop it, and the guest then runs free. The probe runs a few
//! instructions in a scratch VM and reports which kind this KVM is; the stepping loop then
//! re-arms before every step where needed.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::vcpu::{Exit, Vcpu, VcpuError};

/// How single-stepping behaves on this KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSemantics {
    /// Single-step must be re-armed before every KVM_RUN (the trap does not persist).
    pub rearm_each_step: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("single-step probe: creating its scratch VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("single-step probe: guest memory: {0}")]
    Memory(String),
    #[error("single-step probe: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("single-step probe: unexpected exit {0:?}")]
    Unexpected(Exit),
}

const CODE: u64 = 0x1000;
/// Real-mode program: nop; mov al, [0x3000] (MMIO: outside the probe's RAM, so KVM must
/// emulate it); nop; nop; out 0x80, al; hlt. A KVM whose single-step persists stops after
/// each of the first four instructions; one that loses the trap flag in its instruction
/// emulator runs from the MMIO access to the `out` in one go.
const PROGRAM: [u8; 9] = [0x90, 0xa0, 0x00, 0x30, 0x90, 0x90, 0xe6, 0x80, 0xf4];
/// Debug exits a persistent single-step gives before the `out`.
const STEPS_BEFORE_OUT: u32 = 4;
/// The probe's RAM: two pages, so 0x3000 is unbacked.
const PROBE_RAM: usize = 0x2000;

/// Runs the probe in a scratch VM of `kvm` (a few KVM exits, about a millisecond).
pub fn probe(kvm: &Kvm) -> Result<StepSemantics, ProbeError> {
    let vm = kvm.create_vm().map_err(ProbeError::Create)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PROBE_RAM)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    mem.write_slice(&PROGRAM, GuestAddress(CODE))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| ProbeError::Memory(e.to_string()))?;
        let desc = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `mem` outlives `vm` (both are locals dropped in reverse order: the VM
        // first) and the mapping is not changed while registered.
        unsafe { vm.set_user_memory_region(desc) }.map_err(ProbeError::Create)?;
    }
    let mut vcpu = Vcpu::new(vm.create_vcpu(0).map_err(ProbeError::Create)?);
    // Real mode, CS:IP = 0:0x1000.
    let mut sregs = vcpu.sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.regs()?;
    regs.rip = CODE;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs)?;
    vcpu.set_single_step(true)?;
    // Arm once, then count the debug exits until the program's `out`.
    let mut steps = 0;
    for _ in 0..32 {
        match vcpu.run()? {
            Exit::Debug { .. } => steps += 1,
            Exit::MmioRead { .. } => vcpu.complete_mmio_read(&[0xff; 8]),
            Exit::IoOut { .. } => break,
            Exit::Interrupted => {}
            other => return Err(ProbeError::Unexpected(other)),
        }
    }
    let semantics = StepSemantics {
        rearm_each_step: steps < STEPS_BEFORE_OUT,
    };
    tracing::debug!(steps, ?semantics, "single-step probe");
    drop(vcpu);
    drop(vm);
    Ok(semantics)
}
