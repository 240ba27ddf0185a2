//! Reaching an exact pmu-clock position: run freely with the counter's overflow armed a
//! skid margin before the target, then single-step until the ticks and the registers of
//! the position match. The counter can only be late, never early, so a run that stops past
//! the target means the margin was too small: a hard error with a register diff, never a
//! silent wrong position.

use super::{RunStop, StepStop, StopRegs, TickMachine, TickPosition};
use crate::machine::digest::REG_NAMES;

/// The end of one call to [`converge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converged<E> {
    /// The machine is exactly at the target; `steps` single-steps were needed.
    Reached { steps: u64 },
    /// The guest exited to the VMM on the way (deterministic: it happens at the same
    /// place every replay). Handle it and call [`converge`] again.
    Exit(E),
}

#[derive(Debug, thiserror::Error)]
pub enum ConvergeError<E: std::error::Error + 'static> {
    #[error(
        "overshot the target position {target}: the machine is at ticks {ticks} rip {rip:#x}; \
         registers there: {diff} (the counter's skid exceeded the margin of {margin} \
         branches, or the replay diverged earlier)"
    )]
    Overshoot {
        target: TickPosition,
        ticks: u64,
        rip: u64,
        margin: u64,
        diff: String,
    },
    #[error(
        "position {target} not reached after {steps} single-steps at ticks {ticks} (the \
         replay diverged: that RIP/RCX never occurs at those ticks)"
    )]
    NotReached {
        target: TickPosition,
        steps: u64,
        ticks: u64,
    },
    #[error(transparent)]
    Machine(E),
}

/// The registers of a stop, printed for an overshoot report.
fn describe(regs: &StopRegs) -> String {
    REG_NAMES
        .iter()
        .zip(regs.all.0)
        .map(|(name, value)| format!("{name}={value:#x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn at_target(ticks: u64, regs: &StopRegs, target: &TickPosition) -> bool {
    ticks == target.ticks && regs.rip == target.rip && regs.rcx == target.rcx
}

/// Brings `m` exactly to `target`. `margin` is the skid allowance in branches: it must
/// exceed the largest skid, since the run may also go on past the last counted branch
/// (a run that stops at the target's ticks may already be past its RIP). `max_steps`
/// bounds the single-stepping once the ticks are within the margin.
pub fn converge<M: TickMachine + ?Sized>(
    m: &mut M,
    target: &TickPosition,
    margin: u64,
    max_steps: u64,
) -> Result<Converged<M::Exit>, ConvergeError<M::Error>> {
    let overshoot = |ticks: u64, regs: &StopRegs| ConvergeError::Overshoot {
        target: *target,
        ticks,
        rip: regs.rip,
        margin,
        diff: describe(regs),
    };
    let ticks = m.ticks().map_err(ConvergeError::Machine)?;
    if ticks > target.ticks {
        let regs = m.regs().map_err(ConvergeError::Machine)?;
        return Err(overshoot(ticks, &regs));
    }
    // Far away: let the hardware run to a margin before the target.
    if target.ticks - ticks > margin {
        m.arm_overflow(target.ticks - margin)
            .map_err(ConvergeError::Machine)?;
        let stop = m.run();
        m.disarm_overflow().map_err(ConvergeError::Machine)?;
        if let RunStop::Exit(exit) = stop.map_err(ConvergeError::Machine)? {
            return Ok(Converged::Exit(exit));
        }
    }
    // Near: single steps, checking after each.
    let mut steps = 0u64;
    loop {
        let ticks = m.ticks().map_err(ConvergeError::Machine)?;
        let regs = m.regs().map_err(ConvergeError::Machine)?;
        if at_target(ticks, &regs, target) {
            return Ok(Converged::Reached { steps });
        }
        if ticks > target.ticks {
            return Err(overshoot(ticks, &regs));
        }
        if steps == max_steps {
            return Err(ConvergeError::NotReached {
                target: *target,
                steps,
                ticks,
            });
        }
        if let StepStop::Exit(exit) = m.step().map_err(ConvergeError::Machine)? {
            return Ok(Converged::Exit(exit));
        }
        steps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{Op, SimMachine, XorShift};
    use super::*;

    /// A loop body with plain instructions, a rep-string, an I/O exit and the closing
    /// conditional branch.
    fn program() -> Vec<Op> {
        vec![
            Op::Plain,
            Op::Branch,
            Op::Plain,
            Op::Rep(7),
            Op::Plain,
            Op::Io,
            Op::Branch,
            Op::Plain,
            Op::Rep(3),
            Op::Branch,
        ]
    }

    /// Converges from the start to tape index `index`, handling exits like a replayer.
    fn reach(m: &mut SimMachine, index: usize, margin: u64) -> Result<u64, String> {
        let target = m.position_of(index);
        let mut exits = 0;
        loop {
            match converge(m, &target, margin, 10_000).map_err(|e| e.to_string())? {
                Converged::Reached { steps } => return Ok(steps),
                Converged::Exit(()) => {
                    exits += 1;
                    assert!(exits < 10_000, "exit loop");
                }
            }
        }
    }

    #[test]
    fn random_targets_are_reached_exactly_whatever_the_skid() {
        let mut rng = XorShift(0x5eed);
        for max_skid in [0u64, 1, 5, 40, 100] {
            for _ in 0..200 {
                let mut m = SimMachine::new(&program(), 60, max_skid, rng.next_u64());
                let index = (rng.next_u64() % m.len() as u64) as usize;
                reach(&mut m, index, max_skid + 1)
                    .unwrap_or_else(|e| panic!("index {index} skid {max_skid}: {e}"));
                assert_eq!(m.index(), index, "skid {max_skid}");
            }
        }
    }

    #[test]
    fn positions_inside_a_rep_string_are_told_apart_by_rcx() {
        let mut m = SimMachine::new(&program(), 20, 10, 7);
        let reps: Vec<usize> = (0..m.len()).filter(|&i| m.is_rep(i)).collect();
        assert!(reps.len() > 50);
        for &index in reps.iter().step_by(7) {
            let mut fresh = SimMachine::new(&program(), 20, 10, index as u64);
            reach(&mut fresh, index, 10).unwrap();
            assert_eq!(fresh.index(), index);
            // Same ticks and RIP as its neighbour iteration, different RCX.
            let here = fresh.position_of(index);
            if m.is_rep(index + 1) {
                let next = m.position_of(index + 1);
                assert_eq!((here.ticks, here.rip), (next.ticks, next.rip));
                assert_ne!(here.rcx, next.rcx);
            }
        }
        let _ = m.regs();
    }

    #[test]
    fn an_event_at_the_very_first_instruction_needs_no_run_and_no_step() {
        let mut m = SimMachine::new(&program(), 5, 50, 1);
        assert_eq!(reach(&mut m, 0, 50), Ok(0));
        assert_eq!(m.index(), 0);
        assert_eq!(m.free_runs(), 0);
    }

    #[test]
    fn a_skid_beyond_the_margin_is_an_overshoot_with_a_register_diff() {
        // The counter stops 30..=60 branches late; the margin allows 10. No I/O exits: they
        // would end the free run before the skid shows.
        let no_io: Vec<Op> = program().into_iter().filter(|op| *op != Op::Io).collect();
        let mut m = SimMachine::new(&no_io, 100, 60, 3).with_min_skid(30);
        let index = m.len() / 2;
        let err = reach(&mut m, index, 10).unwrap_err();
        assert!(err.contains("overshot the target position"), "{err}");
        assert!(err.contains("rip=0x"), "{err}");
        assert!(err.contains("margin of 10"), "{err}");
    }

    #[test]
    fn a_target_behind_the_machine_is_an_overshoot() {
        let mut m = SimMachine::new(&program(), 10, 0, 3);
        reach(&mut m, 60, 1).unwrap();
        let err = reach(&mut m, 5, 1).unwrap_err();
        assert!(err.contains("overshot"), "{err}");
    }

    #[test]
    fn a_position_that_never_occurs_is_reported_not_reached() {
        let mut m = SimMachine::new(&program(), 10, 0, 3);
        let mut target = m.position_of(20);
        target.rcx = 0xdead;
        let err = loop {
            match converge(&mut m, &target, 1, 50) {
                Ok(Converged::Exit(())) => continue,
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(
            err.contains("not reached") || err.contains("overshot"),
            "{err}"
        );
    }

    #[test]
    fn exits_on_the_way_are_handed_back_and_convergence_resumes() {
        let mut m = SimMachine::new(&program(), 30, 20, 9);
        let index = m.len() - 1;
        let target = m.position_of(index);
        let mut exits = 0;
        loop {
            match converge(&mut m, &target, 20, 10_000).unwrap() {
                Converged::Reached { .. } => break,
                Converged::Exit(()) => exits += 1,
            }
        }
        assert_eq!(m.index(), index);
        assert_eq!(exits, m.io_count_before(index));
    }
}
