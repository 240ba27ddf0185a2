//! A software stand-in for the branch counter on a real vCPU, for hosts without a PMU:
//! the guest is single-stepped, and every instruction that iced-x86 classifies as a
//! conditional branch counts one tick. A "free run" with an armed overflow steps until
//! the count passes the armed value by a random skid, the way a PMU interrupt lands late.
//! It is slow (one KVM exit per instruction) and exists to run the pmu clock's own code
//! (the convergence, the self-test harness) against real KVM registers here.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

use super::kvm::{single_step_noting_kicks, KvmTickError};
use super::{BoxedTickMachine, BranchCounter, RunStop, StepStop, StopRegs, TickMachine, XorShift};
use crate::machine::memory::GuestRam;
use crate::machine::paging::CodeAtRip;
use crate::machine::vcpu::{Exit, Vcpu};

/// The software counter's state between runs.
#[derive(Debug, Clone)]
pub struct EmulatedCounter {
    ticks: u64,
    armed: Option<u64>,
    max_skid: u64,
    rng: XorShift,
}

impl EmulatedCounter {
    /// A counter at zero; overflows land up to `max_skid` branches late (`seed` picks how
    /// late each time).
    pub fn new(max_skid: u64, seed: u64) -> Self {
        EmulatedCounter {
            ticks: 0,
            armed: None,
            max_skid,
            rng: XorShift(seed | 1),
        }
    }
}

impl BranchCounter for EmulatedCounter {
    fn on<'a>(&'a mut self, vcpu: &'a mut Vcpu, mem: &'a GuestRam) -> BoxedTickMachine<'a> {
        Box::new(EmulatedTickMachine {
            vcpu,
            mem,
            state: self,
        })
    }

    fn margin(&self) -> u64 {
        self.max_skid + 1
    }
}

/// The next instruction, as the software counter sees it.
enum Next {
    /// HLT (after STI when `sti`): `len` bytes in all.
    Halt {
        len: u64,
        sti: bool,
    },
    Other {
        branch: bool,
    },
}

pub struct EmulatedTickMachine<'a> {
    vcpu: &'a mut Vcpu,
    mem: &'a GuestRam,
    state: &'a mut EmulatedCounter,
}

impl EmulatedTickMachine<'_> {
    /// What the instruction at RIP is, for counting and for HLT.
    fn next_instruction(&self) -> Result<Next, KvmTickError> {
        let regs = self.vcpu.regs()?;
        let sregs = self.vcpu.sregs()?;
        let code = CodeAtRip::fetch(self.mem, &regs, &sregs);
        let mut decoder =
            Decoder::with_ip(code.bitness, code.code(), regs.rip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(KvmTickError::Decode { rip: regs.rip });
        }
        Ok(match instruction.mnemonic() {
            Mnemonic::Hlt => Next::Halt { len: 1, sti: false },
            // STI's shadow covers the HLT: the pair halts as one.
            Mnemonic::Sti
                if decoder.can_decode() && decoder.decode().mnemonic() == Mnemonic::Hlt =>
            {
                Next::Halt {
                    len: instruction.len() as u64 + 1,
                    sti: true,
                }
            }
            _ => Next::Other {
                branch: instruction.flow_control() == FlowControl::ConditionalBranch,
            },
        })
    }

    /// HLT as KVM reports it when the guest runs freely: an exit with RIP past the HLT.
    /// (Single-stepped, some KVMs step over a HLT without halting; see HOST-NOTES.)
    fn halt(&mut self, len: u64, sti: bool) -> Result<StepStop<Exit>, KvmTickError> {
        let mut regs = self.vcpu.regs()?;
        regs.rip = regs.rip.wrapping_add(len);
        if sti {
            regs.rflags |= 1 << 9;
        }
        self.vcpu.set_regs(&regs)?;
        let mut events = self.vcpu.events()?;
        if events.interrupt.shadow != 0 {
            events.interrupt.shadow = 0;
            self.vcpu.set_events(&events)?;
        }
        Ok(StepStop::Exit(Exit::Hlt))
    }

    fn counted_step(&mut self) -> Result<(StepStop<Exit>, bool), KvmTickError> {
        let branch = match self.next_instruction()? {
            Next::Halt { len, sti } => return Ok((self.halt(len, sti)?, false)),
            Next::Other { branch } => branch,
        };
        let (stop, kicked) = single_step_noting_kicks(self.vcpu)?;
        if branch && stop == StepStop::Stepped {
            self.state.ticks += 1;
        }
        Ok((stop, kicked))
    }

    fn run_inner(&mut self, stop_on_kick: bool) -> Result<RunStop<Exit>, KvmTickError> {
        let skid = self.state.rng.next_u64() % (self.state.max_skid + 1);
        let stop_at = self.state.armed.map(|at| at + skid);
        loop {
            if stop_at.is_some_and(|s| self.state.ticks >= s) {
                return Ok(RunStop::Overflow);
            }
            let (stop, kicked) = self.counted_step()?;
            if let StepStop::Exit(exit) = stop {
                return Ok(RunStop::Exit(exit));
            }
            if kicked && stop_on_kick {
                return Ok(RunStop::Kicked);
            }
        }
    }
}

impl TickMachine for EmulatedTickMachine<'_> {
    type Exit = Exit;
    type Error = KvmTickError;

    fn ticks(&mut self) -> Result<u64, KvmTickError> {
        Ok(self.state.ticks)
    }

    fn arm_overflow(&mut self, at: u64) -> Result<(), KvmTickError> {
        self.state.armed = Some(at);
        Ok(())
    }

    fn disarm_overflow(&mut self) -> Result<(), KvmTickError> {
        self.state.armed = None;
        Ok(())
    }

    fn run(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        self.run_inner(false)
    }

    fn run_until_kick(&mut self) -> Result<RunStop<Exit>, KvmTickError> {
        self.run_inner(true)
    }

    fn step(&mut self) -> Result<StepStop<Exit>, KvmTickError> {
        Ok(self.counted_step()?.0)
    }

    fn regs(&mut self) -> Result<StopRegs, KvmTickError> {
        Ok(StopRegs::from_kvm(&self.vcpu.regs()?))
    }
}
