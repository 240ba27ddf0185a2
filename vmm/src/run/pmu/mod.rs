//! The performance-counter ("pmu") clock: positions are counts of retired conditional
//! branches executed by the guest (rr's "ticks"), plus the registers that tell apart the
//! instructions executed between two branches (RIP, and RCX for rep-string iterations).
//!
//! - [`probe`] asks the kernel whether such a counter opens here and explains its answer;
//! - [`perf`] is the real counter: perf_event_open, guest-only, with an overflow that
//!   interrupts KVM_RUN on the vCPU thread;
//! - [`converge`] reaches an exact position: overflow a margin early (the counter's skid),
//!   then single-step; it is a pure algorithm over [`TickMachine`], tested with a
//!   simulated counter;
//! - [`kvm`] is the [`TickMachine`] of a real vCPU with the real counter;
//! - [`emulated`] counts branches in software on a real vCPU (single-stepping), so the
//!   convergence runs against real KVM on hosts without a PMU;
//! - [`ticked`] is the record/replay loop under this clock (`Machine::run_ticked`);
//! - `crate::host::pmu_selftest` checks the counter and the convergence on a scratch VM
//!   (`ttvm doctor`).
//!
//! Instructions-retired is not deterministic on x86 (interrupts, faults and string
//! instructions are counted differently run to run) and is never used.

pub mod converge;
pub mod emulated;
pub mod kvm;
pub mod perf;
pub mod probe;
#[cfg(test)]
mod sim;
pub mod ticked;

use serde::{Deserialize, Serialize};

use crate::machine::digest::RegSnapshot;

pub use converge::{converge, ConvergeError, Converged};
pub use probe::BranchEvent;

/// An exact execution position under the pmu clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickPosition {
    /// Retired conditional branches since boot (guest mode only).
    pub ticks: u64,
    /// The next instruction.
    pub rip: u64,
    /// Tells apart iterations of a rep-string instruction (same ticks, same RIP).
    pub rcx: u64,
}

impl std::fmt::Display for TickPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ticks {} rip {:#x} rcx {:#x}",
            self.ticks, self.rip, self.rcx
        )
    }
}

/// Registers at a stop: the two that are part of a position, and all general registers
/// for a readable diff when a replay overshoots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRegs {
    pub rip: u64,
    pub rcx: u64,
    pub all: RegSnapshot,
}

impl StopRegs {
    pub fn from_kvm(r: &kvm_bindings::kvm_regs) -> Self {
        StopRegs {
            rip: r.rip,
            rcx: r.rcx,
            all: RegSnapshot::from_regs(r),
        }
    }
}

/// A small xorshift generator: the simulated and the software counters draw their skids
/// from it.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Why a free run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStop<E> {
    /// The counter's overflow interrupted the vCPU (late by the skid).
    Overflow,
    /// The guest exited to the VMM (I/O, halt...): the caller handles it, then converges
    /// again.
    Exit(E),
    /// Another kick (serial input arrived): only from [`TickMachine::run_until_kick`].
    Kicked,
}

/// Why a single step stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStop<E> {
    Stepped,
    Exit(E),
}

/// A vCPU with a branch counter, as the convergence algorithm needs it.
pub trait TickMachine {
    /// A guest exit for the caller to handle.
    type Exit;
    type Error: std::error::Error + 'static;
    /// The counter's current value.
    fn ticks(&mut self) -> Result<u64, Self::Error>;
    /// Interrupt the next free run once the counter reaches `at` (it may stop later).
    fn arm_overflow(&mut self, at: u64) -> Result<(), Self::Error>;
    fn disarm_overflow(&mut self) -> Result<(), Self::Error>;
    /// Runs the guest freely until the overflow or an exit; other kicks are ignored.
    fn run(&mut self) -> Result<RunStop<Self::Exit>, Self::Error>;
    /// Runs the guest freely until the overflow, an exit or any kick (recording: a kick
    /// means host input to deliver).
    fn run_until_kick(&mut self) -> Result<RunStop<Self::Exit>, Self::Error> {
        self.run()
    }
    /// Executes exactly one guest instruction (one rep-string iteration).
    fn step(&mut self) -> Result<StepStop<Self::Exit>, Self::Error>;
    fn regs(&mut self) -> Result<StopRegs, Self::Error>;
}

/// A [`TickMachine`] on a real vCPU.
pub type BoxedTickMachine<'a> =
    Box<dyn TickMachine<Exit = crate::machine::vcpu::Exit, Error = kvm::KvmTickError> + 'a>;

/// A branch counter's state, kept between runs; `on` lends it to a vCPU as a
/// [`TickMachine`] for one phase of the loop.
pub trait BranchCounter {
    fn on<'a>(
        &'a mut self,
        vcpu: &'a mut crate::machine::vcpu::Vcpu,
        mem: &'a crate::machine::memory::GuestRam,
    ) -> BoxedTickMachine<'a>;
    /// The skid allowance for [`converge`] with this counter.
    fn margin(&self) -> u64;
}

/// The skid allowance, in retired conditional branches: how long before a target the
/// overflow is programmed. It must exceed the largest skid (how far past the overflow a
/// CPU keeps executing before the interrupt stops it), since a run that stops at the
/// target's ticks may already be past its RIP.
///
/// These margins are deliberately conservative and were not measured here (the project's
/// hosts have no PMU); a pmu trace would record the margin in its header (`pmu_skid`).
/// Intel cores deliver the PMI within a few dozen branches; AMD Zen's interrupt is known
/// to come much later, so it and unknown CPUs get ten times the margin. The cost of a
/// larger margin is only more single-steps per event (~margin x average instructions per
/// branch).
pub fn skid_margin(vendor: &str) -> u64 {
    match vendor {
        "GenuineIntel" => 100,
        _ => 1000,
    }
}
