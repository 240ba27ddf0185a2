//! The [`TickMachine`] of a real vCPU and the real branch counter, both on the calling
//! thread. Single-step is re-armed before every step, which is correct on every KVM (see
//! [`crate::step_probe`]).

use super::perf::{PerfBranchCounter, PerfError};
use super::{RunStop, StepStop, StopRegs, TickMachine};
use crate::vcpu::{Exit, Vcpu, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum KvmTickError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error("single-step ended with {0:?} instead of a debug exit")]
    UnexpectedStepExit(Box<Exit>),
    #[error("the instruction at {rip:#x} cannot be fetched or decoded")]
    Decode { rip: u64 },
}

/// A vCPU counted by a guest-only branch counter opened on this (the vCPU's) thread. The
/// thread should also own a [`crate::kick::Kicker`] for the vCPU, so an overflow signal that
/// arrives between two KVM_RUNs is not lost (it sets `immediate_exit`); without one, the
/// count is also checked before every run.
pub struct KvmTickMachine<'a> {
    vcpu: &'a mut Vcpu,
    counter: PerfBranchCounter,
    armed: Option<u64>,
}

impl<'a> KvmTickMachine<'a> {
    pub fn new(vcpu: &'a mut Vcpu, counter: PerfBranchCounter) -> Self {
        KvmTickMachine {
            vcpu,
            counter,
            armed: None,
        }
    }

    fn reached_overflow(&self) -> Result<bool, PerfError> {
        Ok(match self.armed {
            Some(at) => self.counter.read()? >= at,
            None => false,
        })
    }
}

/// Executes exactly one guest instruction (re-arming single-step first, as every KVM
/// needs); I/O, MMIO and HLT exits on the way are handed back.
pub(crate) fn single_step(vcpu: &mut Vcpu) -> Result<StepStop<Exit>, KvmTickError> {
    loop {
        vcpu.set_guest_debug(true, None)?;
        match vcpu.run()? {
            Exit::Debug { .. } => return Ok(StepStop::Stepped),
            Exit::Interrupted => vcpu.set_immediate_exit(false),
            Exit::Hlt => return Ok(StepStop::Exit(Exit::Hlt)),
            exit @ (Exit::IoIn { .. }
            | Exit::IoOut { .. }
            | Exit::MmioRead { .. }
            | Exit::MmioWrite { .. }) => return Ok(StepStop::Exit(exit)),
            other => return Err(KvmTickError::UnexpectedStepExit(Box::new(other))),
        }
    }
}

impl TickMachine for KvmTickMachine<'_> {
    type Exit = Exit;
    type Error = KvmTickError;

    fn ticks(&mut self) -> Result<u64, KvmTickError> {
        Ok(self.counter.read()?)
    }

    fn arm_overflow(&mut self, at: u64) -> Result<(), KvmTickError> {
        self.armed = Some(at);
        Ok(self.counter.arm(at)?)
    }

    fn disarm_overflow(&mut self) -> Result<(), KvmTickError> {
        self.armed = None;
        Ok(self.counter.disarm()?)
    }

    fn run(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        self.vcpu.set_guest_debug(false, None)?;
        loop {
            if self.reached_overflow()? {
                return Ok(RunStop::Overflow);
            }
            match self.vcpu.run()? {
                Exit::Interrupted => {
                    self.vcpu.set_immediate_exit(false);
                    // Another kick (not ours) only ends this run early: go on.
                }
                exit => return Ok(RunStop::Exit(exit)),
            }
        }
    }

    fn step(&mut self) -> Result<StepStop<Exit>, KvmTickError> {
        single_step(self.vcpu)
    }

    fn regs(&mut self) -> Result<StopRegs, KvmTickError> {
        Ok(StopRegs::from_kvm(&self.vcpu.regs()?))
    }
}
