//! The [`TickMachine`] of a real vCPU and the real branch counter, both on the calling
//! thread. Single-step is re-armed before every step, which is correct on every KVM (see
//! [`crate::host::step_probe`]).

use super::perf::{PerfBranchCounter, PerfError};
use super::{
    skid_margin, BoxedTickMachine, BranchCounter, RunStop, StepStop, StopRegs, TickMachine,
};
use crate::machine::memory::GuestRam;
use crate::machine::vcpu::{Exit, Vcpu, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum KvmTickError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error("the instruction at {rip:#x} cannot be fetched or decoded")]
    Decode { rip: u64 },
}

/// The real counter's state between runs: the perf event and the overflow armed on it.
pub struct PerfState {
    counter: PerfBranchCounter,
    armed: Option<u64>,
}

impl PerfState {
    pub fn new(counter: PerfBranchCounter) -> Self {
        PerfState {
            counter,
            armed: None,
        }
    }

    pub fn event(&self) -> &super::BranchEvent {
        self.counter.event()
    }
}

impl BranchCounter for PerfState {
    fn on<'a>(&'a mut self, vcpu: &'a mut Vcpu, _mem: &'a GuestRam) -> BoxedTickMachine<'a> {
        Box::new(KvmTickMachine { vcpu, state: self })
    }

    fn margin(&self) -> u64 {
        skid_margin(&self.counter.event().vendor)
    }
}

/// A vCPU counted by a guest-only branch counter opened on this (the vCPU's) thread. The
/// thread should also own a [`crate::run::kick::Kicker`] for the vCPU, so an overflow signal that
/// arrives between two KVM_RUNs is not lost (it sets `immediate_exit`); without one, the
/// count is also checked before every run.
pub struct KvmTickMachine<'a> {
    vcpu: &'a mut Vcpu,
    state: &'a mut PerfState,
}

impl KvmTickMachine<'_> {
    fn reached_overflow(&self) -> Result<bool, PerfError> {
        Ok(match self.state.armed {
            Some(at) => self.state.counter.read()? >= at,
            None => false,
        })
    }

    /// Runs freely; a kick that is not the overflow ends the run only if `stop_on_kick`.
    fn run_inner(&mut self, stop_on_kick: bool) -> Result<RunStop<Exit>, KvmTickError> {
        self.vcpu.set_single_step(false)?;
        loop {
            if self.reached_overflow()? {
                return Ok(RunStop::Overflow);
            }
            match self.vcpu.run()? {
                Exit::Interrupted => {
                    self.vcpu.set_immediate_exit(false);
                    if stop_on_kick && !self.reached_overflow()? {
                        return Ok(RunStop::Kicked);
                    }
                }
                exit => return Ok(RunStop::Exit(exit)),
            }
        }
    }
}

/// Executes exactly one guest instruction (re-arming single-step first, as every KVM
/// needs); any other exit on the way (I/O, MMIO, HLT, interrupt window, shutdown...) is
/// handed back. The flag says whether a kick interrupted the step (it is retried).
pub(crate) fn single_step_noting_kicks(
    vcpu: &mut Vcpu,
) -> Result<(StepStop<Exit>, bool), KvmTickError> {
    let mut kicked = false;
    loop {
        vcpu.set_single_step(true)?;
        match vcpu.run()? {
            Exit::Debug { .. } => return Ok((StepStop::Stepped, kicked)),
            Exit::Interrupted => {
                vcpu.set_immediate_exit(false);
                kicked = true;
            }
            exit => return Ok((StepStop::Exit(exit), kicked)),
        }
    }
}

/// [`single_step_noting_kicks`] for callers that ignore kicks.
pub(crate) fn single_step(vcpu: &mut Vcpu) -> Result<StepStop<Exit>, KvmTickError> {
    Ok(single_step_noting_kicks(vcpu)?.0)
}

impl TickMachine for KvmTickMachine<'_> {
    type Exit = Exit;
    type Error = KvmTickError;

    fn ticks(&mut self) -> Result<u64, KvmTickError> {
        Ok(self.state.counter.read()?)
    }

    fn arm_overflow(&mut self, at: u64) -> Result<(), KvmTickError> {
        self.state.armed = Some(at);
        Ok(self.state.counter.arm(at)?)
    }

    fn disarm_overflow(&mut self) -> Result<(), KvmTickError> {
        self.state.armed = None;
        Ok(self.state.counter.disarm()?)
    }

    fn run(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        self.run_inner(false)
    }

    fn run_until_kick(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        self.run_inner(true)
    }

    fn step(&mut self) -> Result<StepStop<Exit>, KvmTickError> {
        single_step(self.vcpu)
    }

    fn regs(&mut self) -> Result<StopRegs, KvmTickError> {
        Ok(StopRegs::from_kvm(&self.vcpu.regs()?))
    }
}
