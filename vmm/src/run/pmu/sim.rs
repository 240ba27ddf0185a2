//! A simulated guest and counter for the convergence tests: the guest is a tape of
//! executed instructions (plain, conditional branch, rep-string iteration, I/O exit); the
//! counter counts branches and stops a free run late by a random skid, as real PMUs do.

use std::convert::Infallible;

pub use super::XorShift;
use super::{RunStop, StepStop, StopRegs, TickMachine, TickPosition};
use crate::machine::digest::RegSnapshot;

/// One instruction of the simulated program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Plain,
    /// A retired conditional branch: one tick.
    Branch,
    /// A rep-string instruction of this many iterations (one step each, no ticks).
    Rep(u64),
    /// An instruction that exits to the VMM after it executes.
    Io,
}

#[derive(Debug, Clone, Copy)]
struct Executed {
    op: Op,
    rip: u64,
    rcx: u64,
}

pub struct SimMachine {
    tape: Vec<Executed>,
    /// ticks_before[i]: branches retired before tape entry i.
    ticks_before: Vec<u64>,
    index: usize,
    armed: Option<u64>,
    min_skid: u64,
    max_skid: u64,
    rng: XorShift,
    free_runs: u64,
}

impl SimMachine {
    /// `program` run `loops` times; the counter stops up to `max_skid` branches late.
    pub fn new(program: &[Op], loops: u64, max_skid: u64, seed: u64) -> Self {
        let mut tape = Vec::new();
        for lap in 0..loops {
            for (i, op) in program.iter().enumerate() {
                let rip = 0x1000 + 4 * i as u64;
                match *op {
                    Op::Rep(n) => tape.extend((0..n).map(|k| Executed {
                        op: *op,
                        rip,
                        rcx: n - k,
                    })),
                    _ => tape.push(Executed {
                        op: *op,
                        rip,
                        rcx: 1000 + lap,
                    }),
                }
            }
        }
        let mut ticks_before = Vec::with_capacity(tape.len() + 1);
        let mut ticks = 0;
        for e in &tape {
            ticks_before.push(ticks);
            ticks += u64::from(e.op == Op::Branch);
        }
        ticks_before.push(ticks);
        SimMachine {
            tape,
            ticks_before,
            index: 0,
            armed: None,
            min_skid: 0,
            max_skid,
            rng: XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            free_runs: 0,
        }
    }

    pub fn with_min_skid(mut self, min: u64) -> Self {
        self.min_skid = min;
        self
    }

    pub fn len(&self) -> usize {
        self.tape.len()
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn free_runs(&self) -> u64 {
        self.free_runs
    }

    pub fn is_rep(&self, i: usize) -> bool {
        self.tape.get(i).is_some_and(|e| matches!(e.op, Op::Rep(_)))
    }

    /// The position a recorder would log just before tape entry `i` executes.
    pub fn position_of(&self, i: usize) -> TickPosition {
        TickPosition {
            ticks: self.ticks_before[i],
            rip: self.tape[i].rip,
            rcx: self.tape[i].rcx,
        }
    }

    pub fn io_count_before(&self, i: usize) -> u64 {
        self.tape[..i].iter().filter(|e| e.op == Op::Io).count() as u64
    }

    /// Executes one tape entry; true if it exits to the VMM.
    fn execute(&mut self) -> bool {
        let op = self.tape[self.index].op;
        self.index += 1;
        op == Op::Io
    }

    fn at_end(&self) -> bool {
        self.index >= self.tape.len()
    }
}

impl TickMachine for SimMachine {
    type Exit = ();
    type Error = Infallible;

    fn ticks(&mut self) -> Result<u64, Infallible> {
        Ok(self.ticks_before[self.index])
    }

    fn arm_overflow(&mut self, at: u64) -> Result<(), Infallible> {
        self.armed = Some(at);
        Ok(())
    }

    fn disarm_overflow(&mut self) -> Result<(), Infallible> {
        self.armed = None;
        Ok(())
    }

    fn run(&mut self) -> Result<RunStop<()>, Infallible> {
        self.free_runs += 1;
        let Some(at) = self.armed else {
            panic!("a free run without an armed overflow would never stop");
        };
        let span = self.max_skid.saturating_sub(self.min_skid) + 1;
        let stop_at = at + self.min_skid + self.rng.next_u64() % span;
        while !self.at_end() && self.ticks_before[self.index] < stop_at {
            if self.execute() {
                return Ok(RunStop::Exit(()));
            }
        }
        // The interrupt lands somewhere before the next branch.
        while !self.at_end()
            && self.tape[self.index].op != Op::Branch
            && self.rng.next_u64().is_multiple_of(2)
        {
            if self.execute() {
                return Ok(RunStop::Exit(()));
            }
        }
        Ok(RunStop::Overflow)
    }

    fn step(&mut self) -> Result<StepStop<()>, Infallible> {
        assert!(
            !self.at_end(),
            "stepped past the end of the simulated program"
        );
        Ok(if self.execute() {
            StepStop::Exit(())
        } else {
            StepStop::Stepped
        })
    }

    fn regs(&mut self) -> Result<StopRegs, Infallible> {
        let (rip, rcx) = self
            .tape
            .get(self.index)
            .map_or((0xffff, 0), |e| (e.rip, e.rcx));
        Ok(StopRegs {
            rip,
            rcx,
            all: RegSnapshot::from_regs(&kvm_bindings::kvm_regs {
                rip,
                rcx,
                ..Default::default()
            }),
        })
    }
}
