//! The pmu clock checked end to end on this host's real PMU, in a scratch VM: (1) the
//! guest-only branch count of a known loop program is exact; (2) positions logged while
//! single-stepping it (ticks, RIP, RCX, as a recorder logs them) are reached again exactly
//! in a fresh VM by [`converge`], overflow signal and skid included, with every general
//! register equal. It needs a PMU, so it cannot run on the project's own machines.

use kvm_ioctls::Kvm;

use crate::host::step_probe::{ProbeError, ScratchVm};
use crate::machine::vcpu::Exit;
use crate::run::pmu::converge::{converge, ConvergeError, Converged};
use crate::run::pmu::emulated::EmulatedCounter;
use crate::run::pmu::kvm::{KvmTickError, PerfState};
use crate::run::pmu::perf::{PerfBranchCounter, PerfError};
use crate::run::pmu::probe::BranchEvent;
use crate::run::pmu::{BranchCounter, RunStop, StepStop, StopRegs, TickPosition};

/// Real-mode program: mov cx,2000; l1: dec cx; jnz l1; mov cx,5; mov si,0x1800;
/// mov di,0x1900; rep movsb; mov cx,1000; l2: dec cx; jnz l2; out 0x80,al; hlt.
const PROGRAM: [u8; 26] = [
    0xb9, 0xd0, 0x07, 0x49, 0x75, 0xfd, 0xb9, 0x05, 0x00, 0xbe, 0x00, 0x18, 0xbf, 0x00, 0x19, 0xf3,
    0xa4, 0xb9, 0xe8, 0x03, 0x49, 0x75, 0xfd, 0xe6, 0x80, 0xf4,
];
/// Conditional branches PROGRAM retires: every `jnz` of both loops.
pub const EXPECTED_BRANCHES: u64 = 2000 + 1000;

#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error(transparent)]
    Scratch(#[from] ProbeError),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error(transparent)]
    Converge(#[from] ConvergeError<KvmTickError>),
    #[error("the loop guest ended with {0:?} instead of its `out`")]
    Unexpected(Box<Exit>),
    #[error("the counter overflowed during a run that had no overflow armed")]
    SpuriousOverflow,
    #[error(transparent)]
    Machine(#[from] KvmTickError),
    #[error("reached position {position} but the registers differ from the recorded ones: {diff}")]
    RegistersDiffer {
        position: TickPosition,
        diff: String,
    },
}

/// What the self-test measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestReport {
    pub expected_branches: u64,
    pub counted_branches: u64,
    /// Positions converged to (all reached exactly with equal registers).
    pub positions_checked: usize,
    pub margin: u64,
}

impl SelftestReport {
    pub fn count_exact(&self) -> bool {
        self.expected_branches == self.counted_branches
    }
}

/// Makes a fresh counter for each scratch VM: the real one, or the emulated one.
pub trait CounterMaker {
    fn make(&self) -> Result<Box<dyn BranchCounter>, SelftestError>;
}

/// The host's PMU counting `event`.
pub struct PerfMaker(pub BranchEvent);

impl CounterMaker for PerfMaker {
    fn make(&self) -> Result<Box<dyn BranchCounter>, SelftestError> {
        Ok(Box::new(PerfState::new(PerfBranchCounter::open(&self.0)?)))
    }
}

/// The software counter ([`EmulatedCounter`]), overflowing up to `max_skid` late.
pub struct EmulatedMaker {
    pub max_skid: u64,
    pub seed: std::cell::Cell<u64>,
}

impl CounterMaker for EmulatedMaker {
    fn make(&self) -> Result<Box<dyn BranchCounter>, SelftestError> {
        let seed = self.seed.get();
        self.seed
            .set(seed.wrapping_mul(6364136223846793005).wrapping_add(1));
        Ok(Box::new(EmulatedCounter::new(self.max_skid, seed)))
    }
}

fn unexpected(exit: Exit) -> SelftestError {
    SelftestError::Unexpected(Box::new(exit))
}

/// Runs the loop program freely; returns the branches counted up to its `out`.
fn count_free_run(kvm: &Kvm, maker: &dyn CounterMaker) -> Result<u64, SelftestError> {
    let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
    let mut counter = maker.make()?;
    let mut m = counter.on(&mut scratch.vcpu, &scratch.mem);
    let start = m.ticks()?;
    match m.run()? {
        RunStop::Exit(Exit::IoOut { .. }) => Ok(m.ticks()? - start),
        RunStop::Exit(other) => Err(unexpected(other)),
        RunStop::Overflow | RunStop::Kicked => Err(SelftestError::SpuriousOverflow),
    }
}

/// Single-steps the program, logging every position with its registers.
fn log_positions(
    kvm: &Kvm,
    maker: &dyn CounterMaker,
) -> Result<Vec<(TickPosition, StopRegs)>, SelftestError> {
    let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
    let mut counter = maker.make()?;
    let mut m = counter.on(&mut scratch.vcpu, &scratch.mem);
    let start = m.ticks()?;
    let mut log = Vec::new();
    loop {
        let regs = m.regs()?;
        let position = TickPosition {
            ticks: m.ticks()? - start,
            rip: regs.rip,
            rcx: regs.rcx,
        };
        log.push((position, regs));
        match m.step()? {
            StepStop::Stepped => {}
            StepStop::Exit(Exit::IoOut { .. }) => return Ok(log),
            StepStop::Exit(other) => return Err(unexpected(other)),
        }
    }
}

/// Runs both checks on the host's PMU counting `event`; `samples` positions are converged
/// to.
pub fn run(
    kvm: &Kvm,
    event: &BranchEvent,
    samples: usize,
) -> Result<SelftestReport, SelftestError> {
    run_with(kvm, &PerfMaker(event.clone()), samples)
}

/// The self-test on this host's KVM as one verdict (`--clock auto` takes the PMU only if
/// it passes): the counter counts the loop exactly and reaches `samples` logged positions.
pub fn verdict(event: &BranchEvent, samples: usize) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let report = run(&kvm, event, samples).map_err(|e| e.to_string())?;
    if report.count_exact() {
        Ok(())
    } else {
        Err(format!(
            "it counted {} branches of a loop that has {}",
            report.counted_branches, report.expected_branches
        ))
    }
}

/// Runs both checks with the counter `maker` makes.
pub fn run_with(
    kvm: &Kvm,
    maker: &dyn CounterMaker,
    samples: usize,
) -> Result<SelftestReport, SelftestError> {
    let counted = count_free_run(kvm, maker)?;
    let log = log_positions(kvm, maker)?;
    let mut margin = 0;
    let stride = (log.len() / samples.max(1)).max(1);
    let mut checked = 0;
    for (target, want) in log.iter().step_by(stride).skip(1) {
        let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
        let mut counter = maker.make()?;
        margin = counter.margin();
        let mut m = counter.on(&mut scratch.vcpu, &scratch.mem);
        let start = m.ticks()?;
        // Positions are relative to the VM's start: shift the target to this counter.
        let absolute = TickPosition {
            ticks: target.ticks + start,
            ..*target
        };
        // The program exits only at its end: any exit before a target is a failure.
        if let Converged::Exit(exit) = converge(&mut *m, &absolute, margin, 1_000_000)? {
            return Err(unexpected(exit));
        }
        let got = m.regs()?;
        if got != *want {
            return Err(SelftestError::RegistersDiffer {
                position: *target,
                diff: want.all.diff(&got.all).join(", "),
            });
        }
        checked += 1;
    }
    Ok(SelftestReport {
        expected_branches: EXPECTED_BRANCHES,
        counted_branches: counted,
        positions_checked: checked,
        margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole self-test on this host's real KVM, with the emulated counter: the loop
    /// program's branch count, and convergence to logged positions (overflow landing up
    /// to 20 branches late) with every register equal.
    #[test]
    fn the_self_test_passes_on_real_kvm_with_the_emulated_counter() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let maker = EmulatedMaker {
            max_skid: 20,
            seed: std::cell::Cell::new(0x5eed),
        };
        let report = run_with(&kvm, &maker, 12).unwrap();
        assert!(report.count_exact(), "{report:?}");
        assert!(report.positions_checked >= 10, "{report:?}");
    }
}
