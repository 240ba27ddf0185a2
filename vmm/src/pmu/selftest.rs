//! The pmu clock checked end to end on this host's real PMU, in a scratch VM: (1) the
//! guest-only branch count of a known loop program is exact; (2) positions logged while
//! single-stepping it (ticks, RIP, RCX, as a recorder logs them) are reached again exactly
//! in a fresh VM by [`converge`], overflow signal and skid included, with every general
//! register equal. It needs a PMU, so it cannot run on the project's own machines.

use kvm_ioctls::Kvm;

use super::converge::{converge, ConvergeError, Converged};
use super::kvm::{stop_regs, KvmTickError, KvmTickMachine};
use super::perf::{PerfBranchCounter, PerfError};
use super::probe::BranchEvent;
use super::{skid_margin, TickMachine, TickPosition};
use crate::step_probe::{ProbeError, ScratchVm};
use crate::vcpu::{Exit, VcpuError};

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
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Perf(#[from] PerfError),
    #[error(transparent)]
    Converge(#[from] ConvergeError<KvmTickError>),
    #[error("the loop guest ended with {0:?} instead of its `out`")]
    Unexpected(Box<Exit>),
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

/// Runs the loop program freely; returns the branches counted up to its `out`.
fn count_free_run(kvm: &Kvm, event: &BranchEvent) -> Result<u64, SelftestError> {
    let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
    let counter = PerfBranchCounter::open(event)?;
    let start = counter.read()?;
    loop {
        match scratch.vcpu.run()? {
            Exit::IoOut { .. } => return Ok(counter.read()? - start),
            Exit::Interrupted => scratch.vcpu.set_immediate_exit(false),
            other => return Err(SelftestError::Unexpected(Box::new(other))),
        }
    }
}

/// Single-steps the program, logging every position with its registers.
fn log_positions(
    kvm: &Kvm,
    event: &BranchEvent,
) -> Result<Vec<(TickPosition, kvm_bindings::kvm_regs)>, SelftestError> {
    let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
    let counter = PerfBranchCounter::open(event)?;
    let start = counter.read()?;
    let mut log = Vec::new();
    loop {
        let regs = scratch.vcpu.regs()?;
        let position = TickPosition {
            ticks: counter.read()? - start,
            rip: regs.rip,
            rcx: regs.rcx,
        };
        log.push((position, regs));
        scratch.vcpu.set_guest_debug(true, None)?;
        match scratch.vcpu.run()? {
            Exit::Debug { .. } | Exit::Interrupted => {}
            Exit::IoOut { .. } => return Ok(log),
            other => return Err(SelftestError::Unexpected(Box::new(other))),
        }
    }
}

/// Runs both checks with `event`; `samples` positions are converged to.
pub fn run(
    kvm: &Kvm,
    event: &BranchEvent,
    samples: usize,
) -> Result<SelftestReport, SelftestError> {
    let counted = count_free_run(kvm, event)?;
    let log = log_positions(kvm, event)?;
    let margin = skid_margin(&event.vendor);
    let stride = (log.len() / samples.max(1)).max(1);
    let mut checked = 0;
    for (target, want) in log.iter().step_by(stride).skip(1) {
        let mut scratch = ScratchVm::new(kvm, &PROGRAM)?;
        let counter = PerfBranchCounter::open(event)?;
        let start = counter.read()?;
        // Positions are relative to the VM's start: shift the target to this counter.
        let absolute = TickPosition {
            ticks: target.ticks + start,
            ..*target
        };
        let mut m = KvmTickMachine::new(&mut scratch.vcpu, &counter);
        // The program exits only at its end: any exit before a target is a failure.
        if let Converged::Exit(exit) = converge(&mut m, &absolute, margin, 1_000_000)? {
            return Err(SelftestError::Unexpected(Box::new(exit)));
        }
        let got = m.regs().map_err(ConvergeError::Machine)?;
        let want = stop_regs(want);
        if got != want {
            let diff = want
                .all
                .iter()
                .zip(&got.all)
                .filter(|(w, g)| w != g)
                .map(|((name, w), (_, g))| format!("{name} recorded {w:#x} replayed {g:#x}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SelftestError::RegistersDiffer {
                position: *target,
                diff,
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
