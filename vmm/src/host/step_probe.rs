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

use crate::machine::vcpu::{ExecBreakpoints, Exit, Vcpu, VcpuError};

/// How single-stepping behaves on this KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSemantics {
    /// Single-step must be re-armed before every KVM_RUN (the trap does not persist).
    pub rearm_each_step: bool,
    /// The instructions this KVM runs together with the next one in one step
    /// (`crate::host::merge_probe`); the loop executes them in the VMM instead.
    #[serde(default)]
    pub merges: crate::host::merge_probe::StepMerges,
    /// Whether user-mode (CPL3) code can be single-stepped; where not, the stepping loop
    /// stops clearly when the guest enters user mode (`probe_cpl3`).
    #[serde(default = "yes")]
    pub user_mode: bool,
    /// Whether a hardware execution breakpoint at an exception handler's entry stops a
    /// single step in which the exception is delivered (`probe_exception_breakpoint`).
    /// Where single-step is the guest's trap flag, the loop relies on it to step exception
    /// handlers; where it does not work, those handlers run inside one step.
    #[serde(default)]
    pub exception_breakpoints: bool,
}

impl StepSemantics {
    /// The exceptions whose handlers the single-step loop stops at with breakpoints on
    /// this KVM (`crate::run::singlestep::WATCHED_EXCEPTIONS` where single-step is the trap
    /// flag and such breakpoints work; none elsewhere).
    pub fn watched_exceptions(&self) -> &'static [u8] {
        if self.rearm_each_step && self.exception_breakpoints {
            &crate::run::singlestep::WATCHED_EXCEPTIONS
        } else {
            &[]
        }
    }
}

fn yes() -> bool {
    true
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

/// A throw-away VM with `PROBE_RAM` bytes of RAM holding `program` at `CODE`, and a vCPU
/// in real mode at CS:IP = 0:CODE. Field order is drop order: vCPU, VM, then the memory.
pub struct ScratchVm {
    pub vcpu: Vcpu,
    _vm: kvm_ioctls::VmFd,
    pub mem: GuestMemoryMmap,
}

impl ScratchVm {
    pub fn new(kvm: &Kvm, program: &[u8]) -> Result<Self, ProbeError> {
        Self::with_ram(kvm, program, PROBE_RAM)
    }

    /// Like `new`, with `ram` bytes of RAM from address 0.
    pub fn with_ram(kvm: &Kvm, program: &[u8], ram: usize) -> Result<Self, ProbeError> {
        let vm = kvm.create_vm().map_err(ProbeError::Create)?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram)])
            .map_err(|e| ProbeError::Memory(e.to_string()))?;
        mem.write_slice(program, GuestAddress(CODE))
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
            // SAFETY: the mapping lives in the returned ScratchVm, which drops the VM before
            // the memory, and is not changed while registered.
            unsafe { vm.set_user_memory_region(desc) }.map_err(ProbeError::Create)?;
        }
        let vcpu = Vcpu::new(vm.create_vcpu(0).map_err(ProbeError::Create)?);
        let mut sregs = vcpu.sregs()?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.regs()?;
        regs.rip = CODE;
        regs.rflags = 0x2;
        vcpu.set_regs(&regs)?;
        Ok(ScratchVm { vcpu, _vm: vm, mem })
    }
}

/// Runs the probe in a scratch VM of `kvm` (a few KVM exits, about a millisecond).
pub fn probe(kvm: &Kvm) -> Result<StepSemantics, ProbeError> {
    let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
    let vcpu = &mut scratch.vcpu;
    vcpu.set_single_step(true)?;
    // Arm once, then count the debug exits until the program's `out`.
    let mut steps = 0;
    for _ in 0..32 {
        match vcpu.run()? {
            Exit::Debug { .. } => steps += 1,
            Exit::MmioRead { pending, .. } => vcpu.complete_mmio_read(pending, &[0xff; 8])?,
            Exit::IoOut { .. } => break,
            Exit::Interrupted => {}
            other => return Err(ProbeError::Unexpected(other)),
        }
    }
    let semantics = StepSemantics {
        rearm_each_step: steps < STEPS_BEFORE_OUT,
        merges: crate::host::merge_probe::probe(kvm)?,
        user_mode: probe_cpl3(kvm)?.is_ok(),
        exception_breakpoints: probe_exception_breakpoint(kvm)?,
    };
    tracing::debug!(steps, ?semantics, "single-step probe");
    Ok(semantics)
}

/// Real-mode program for `probe_exception_breakpoint`: `ud2` at CODE, whose #UD handler
/// (IVT entry 6 -> 0:HANDLER) is a `hlt`.
const UD_PROGRAM: [u8; 2] = [0x0f, 0x0b];
const UD_HANDLER: u64 = CODE + 0x10;

/// Whether a hardware execution breakpoint at an exception handler's entry ends a single
/// step of an instruction that raises the exception there. A KVM that single-steps with the
/// trap flag loses it when the exception is delivered, and only the breakpoint then stops
/// the step before the handler runs (on some nested KVMs the breakpoint never fires). On a
/// KVM whose step persists, the step ends at the handler anyway: true too.
pub fn probe_exception_breakpoint(kvm: &Kvm) -> Result<bool, ProbeError> {
    let mut scratch = ScratchVm::new(kvm, &UD_PROGRAM)?;
    let ivt_entry = (UD_HANDLER as u32) & 0xffff; // segment 0 in the high half
    scratch
        .mem
        .write_obj(ivt_entry, GuestAddress(6 * 4))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    scratch
        .mem
        .write_obj(0xf4u8, GuestAddress(UD_HANDLER))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let vcpu = &mut scratch.vcpu;
    vcpu.set_guest_debug(true, ExecBreakpoints::at(UD_HANDLER))?;
    for _ in 0..4 {
        match vcpu.run()? {
            Exit::Debug { pc, .. } => return Ok(pc == UD_HANDLER),
            Exit::Interrupted => {}
            other => {
                tracing::debug!(?other, "exception-breakpoint probe: no debug exit");
                return Ok(false);
            }
        }
    }
    Ok(false)
}

/// Whether single-stepping works for code at CPL3 (user mode): a scratch vCPU in flat
/// 32-bit protected mode with paging (one 4 MiB user page) at privilege level 3 steps over
/// nops. Some KVMs pass the debug
/// trap to the guest instead (which, with no IDT, shuts it down).
pub fn probe_cpl3(kvm: &Kvm) -> Result<Result<(), String>, ProbeError> {
    let mut scratch = ScratchVm::new(kvm, &[0x90, 0x90, 0x90, 0x90, 0xf4])?;
    let mut sregs = scratch.vcpu.sregs()?;
    let seg = |selector: u16, type_: u8| kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(0x1b, 0xb);
    sregs.ss = seg(0x23, 0x3);
    sregs.ds = sregs.ss;
    sregs.es = sregs.ss;
    sregs.fs = sregs.ss;
    sregs.gs = sregs.ss;
    sregs.tr = kvm_bindings::kvm_segment {
        limit: 0x67,
        selector: 0x28,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    // Page directory at 0: entry 0 maps 0-4 MiB, present, writable, user, 4 MiB page.
    scratch
        .mem
        .write_obj(0x87u32, GuestAddress(0))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let vcpu = &mut scratch.vcpu;
    sregs.cr3 = 0;
    sregs.cr4 |= 0x10; // PSE
    sregs.cr0 |= 0x8000_0001; // PG | PE
    vcpu.set_sregs(&sregs)?;
    vcpu.set_single_step(true)?;
    for _ in 0..3 {
        match vcpu.run()? {
            Exit::Debug { .. } => {}
            Exit::Interrupted => {}
            other => {
                return Ok(Err(format!(
                    "the step ended with {other:?} instead of a debug exit"
                )))
            }
        }
        // Re-arm each time, as on KVMs that need it; CPL3 stepping is what is probed here.
        vcpu.set_single_step(true)?;
    }
    Ok(Ok(()))
}
