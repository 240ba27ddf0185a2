//! A software stand-in for the branch counter on a real vCPU, for hosts without a PMU:
//! the guest is single-stepped, and every instruction that iced-x86 classifies as a
//! conditional branch counts one tick. A "free run" with an armed overflow steps until
//! the count passes the armed value by a random skid, the way a PMU interrupt lands late.
//! It is slow (one KVM exit per instruction) and exists to run the pmu clock's own code
//! (the convergence, the self-test harness) against real KVM registers here.

use iced_x86::{Decoder, DecoderOptions, FlowControl};

use super::kvm::{single_step, KvmTickError};
use super::{RunStop, StepStop, StopRegs, TickMachine, XorShift};
use crate::memory::GuestRam;
use crate::paging::CodeAtRip;
use crate::vcpu::{Exit, Vcpu};

pub struct EmulatedTickMachine<'a> {
    vcpu: &'a mut Vcpu,
    mem: &'a GuestRam,
    ticks: u64,
    armed: Option<u64>,
    max_skid: u64,
    rng: XorShift,
}

impl<'a> EmulatedTickMachine<'a> {
    /// A counter at zero; overflows land up to `max_skid` branches late (`seed` picks how
    /// late each time).
    pub fn new(vcpu: &'a mut Vcpu, mem: &'a GuestRam, max_skid: u64, seed: u64) -> Self {
        EmulatedTickMachine {
            vcpu,
            mem,
            ticks: 0,
            armed: None,
            max_skid,
            rng: XorShift(seed | 1),
        }
    }

    /// Whether the instruction at RIP is a conditional branch.
    fn at_branch(&self) -> Result<bool, KvmTickError> {
        let regs = self.vcpu.regs()?;
        let sregs = self.vcpu.sregs()?;
        let code = CodeAtRip::fetch(self.mem, &regs, &sregs);
        let mut decoder =
            Decoder::with_ip(code.bitness, code.code(), regs.rip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(KvmTickError::Decode { rip: regs.rip });
        }
        Ok(instruction.flow_control() == FlowControl::ConditionalBranch)
    }

    fn counted_step(&mut self) -> Result<StepStop<Exit>, KvmTickError> {
        let branch = self.at_branch()?;
        let stop = single_step(self.vcpu)?;
        if branch && stop == StepStop::Stepped {
            self.ticks += 1;
        }
        Ok(stop)
    }
}

impl TickMachine for EmulatedTickMachine<'_> {
    type Exit = Exit;
    type Error = KvmTickError;

    fn ticks(&mut self) -> Result<u64, KvmTickError> {
        Ok(self.ticks)
    }

    fn arm_overflow(&mut self, at: u64) -> Result<(), KvmTickError> {
        self.armed = Some(at);
        Ok(())
    }

    fn disarm_overflow(&mut self) -> Result<(), KvmTickError> {
        self.armed = None;
        Ok(())
    }

    fn run(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        let skid = self.rng.next_u64() % (self.max_skid + 1);
        let stop_at = self.armed.map(|at| at + skid);
        loop {
            if stop_at.is_some_and(|s| self.ticks >= s) {
                return Ok(RunStop::Overflow);
            }
            if let StepStop::Exit(exit) = self.counted_step()? {
                return Ok(RunStop::Exit(exit));
            }
        }
    }

    fn step(&mut self) -> Result<StepStop<Exit>, KvmTickError> {
        self.counted_step()
    }

    fn regs(&mut self) -> Result<StopRegs, KvmTickError> {
        Ok(StopRegs::from_kvm(&self.vcpu.regs()?))
    }
}
