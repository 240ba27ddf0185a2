//! The pmu clock's run loop, shared by record and replay.
//!
//! The guest runs freely; the VMM looks at the world only at *stops*: after each guest exit
//! (I/O, HLT, interrupt window: deterministic, the replay meets them by running) and at
//! asynchronous stops (the counter's overflow armed for the next timer deadline, or a kick
//! because host input arrived: the recording logs them, the replay converges to them
//! exactly). A stop is a [`TickPosition`]: ticks, RIP, RCX, taken at an instruction boundary
//! (a pending I/O is completed first, so no stop is ever in the middle of an instruction).
//!
//! At every stop the loop asks a [`TickDriver`] the same questions as the single-step loop
//! asks its `StepDriver` (serial input, whether to inject, idling), with the stop's ticks as
//! the position; the recorder answers from the host and logs, the replayer answers from the
//! log. Guest time is virtual: `ns_per_tick` per tick plus the time skipped while halted, so
//! timer deadlines are tick counts and devices see the same time in both.
//!
//! RDTSC and RDRAND cannot be trapped through KVM's API while the guest runs freely: a guest
//! whose control flow depends on them does not replay (the replay reports where it went
//! another way). See docs/DESIGN.md, "The pmu clock".

use std::time::{Duration, Instant};

use super::converge::{converge, ConvergeError, Converged};
use super::kvm::KvmTickError;
use super::{BranchCounter, RunStop, TickPosition};
use crate::machine::digest::RegSnapshot;
use crate::machine::vcpu::Exit;
use crate::machine::{Machine, MachineError};
use crate::run::end::RunEnd;
use crate::run::kick::{KickHandle, Kicker};
use crate::run::singlestep::{Halted, StepDriver, SteppedError, Stop};

/// Single-steps allowed per convergence once the counter is within the margin.
const MAX_CONVERGE_STEPS: u64 = 10_000_000;

/// How the loop must run between two stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPlan {
    /// Recording: run freely until an exit, the next timer deadline or a kick.
    Free,
    /// Replay: the next recorded stop is asynchronous, at exactly this position.
    StopAt(TickPosition),
    /// Replay: the next recorded stop is a guest exit, at most at these ticks (a run past
    /// them has diverged). None: the trace has nothing more; run until the guest ends.
    ExitBy(Option<u64>),
}

/// The outside world of a pmu-clock run: a [`StepDriver`] whose positions are ticks, plus
/// the stops that make them exact.
pub trait TickDriver: StepDriver {
    /// A new stop. `asynchronous`: an overflow or a kick, not a guest exit. May end the run
    /// (the user asked).
    fn stop_at(
        &mut self,
        at: &TickPosition,
        asynchronous: bool,
    ) -> Result<Option<Stop>, Self::Error>;
    /// How to run until the next stop.
    fn plan(&mut self) -> Result<RunPlan, Self::Error>;
    /// The run went another way than recorded; `what` says how.
    fn diverged(&mut self, at: &TickPosition, what: String) -> Self::Error;
    /// Lets host input kick the vCPU out of a free run (recording).
    fn set_kick(&mut self, _kick: KickHandle) {}
}

#[derive(Debug, thiserror::Error)]
pub enum TickedError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("branch counter: {0}")]
    Counter(#[from] KvmTickError),
    #[error(transparent)]
    Driver(E),
}

impl<E: std::error::Error + 'static> From<SteppedError<E>> for TickedError<E> {
    fn from(e: SteppedError<E>) -> Self {
        match e {
            SteppedError::Machine(e) => TickedError::Machine(e),
            SteppedError::Driver(e) => TickedError::Driver(e),
        }
    }
}

/// Guest time settings of the pmu clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickTime {
    pub ns_per_tick: u64,
}

/// How a pmu-clock run finished.
#[derive(Debug, Clone)]
pub struct TickedReport {
    /// The guest's end, or None if the driver stopped the run.
    pub end: Option<RunEnd>,
    pub position: TickPosition,
    /// Digest of registers, memory and devices at the end.
    pub final_digest: u64,
    /// Asynchronous stops (overflows and kicks).
    pub async_stops: u64,
    /// Guest exits.
    pub exits: u64,
    pub duration: Duration,
    pub guest_ns: u64,
}

/// Virtual time: ticks at a fixed rate plus what was skipped while halted.
#[derive(Debug, Clone, Copy)]
struct TickClock {
    ns_per_tick: u64,
    skipped_ns: u64,
}

impl TickClock {
    fn now_ns(&self, ticks: u64) -> u64 {
        ticks
            .saturating_mul(self.ns_per_tick)
            .saturating_add(self.skipped_ns)
    }

    /// The first tick count at which guest time reaches `deadline_ns`.
    fn ticks_at(&self, deadline_ns: u64) -> u64 {
        deadline_ns
            .saturating_sub(self.skipped_ns)
            .div_ceil(self.ns_per_tick.max(1))
    }
}

const RFLAGS_IF: u64 = 1 << 9;

/// What ended one run phase.
enum Phase {
    Exit(Exit),
    Async,
}

impl Machine {
    /// Runs the guest under the pmu clock, counted by `counter`, until it ends or the driver
    /// stops it.
    pub fn run_ticked<D: TickDriver>(
        &mut self,
        counter: &mut dyn BranchCounter,
        driver: &mut D,
        time: TickTime,
    ) -> Result<TickedReport, TickedError<D::Error>> {
        let started = Instant::now();
        let facts = driver.boot().map_err(TickedError::Driver)?;
        self.boot_wall_clock_ns = facts.wall_clock_ns;
        let kicker = Kicker::new(self.vcpu.immediate_exit_ptr(), Instant::now())
            .map_err(MachineError::from)?;
        driver.set_kick(kicker.handle());
        let margin = counter.margin();
        let mut clock = TickClock {
            ns_per_tick: time.ns_per_tick,
            skipped_ns: 0,
        };
        let mut halted = false;
        let mut asynchronous = false;
        let (mut async_stops, mut exits) = (0u64, 0u64);
        // The count at the current stop: read once per stop, after each run phase.
        let mut ticks = counter.on(&mut self.vcpu, &self.mem).ticks()?;
        let (end, at) = 'run: loop {
            self.vcpu.set_immediate_exit(false);
            let regs = self.vcpu.regs().map_err(MachineError::from)?;
            let at = TickPosition {
                ticks,
                rip: regs.rip,
                rcx: regs.rcx,
            };
            self.now_ns = clock.now_ns(ticks);
            tracing::debug!(%at, asynchronous, halted, rflags = regs.rflags, "pmu stop");
            if driver
                .stop_at(&at, asynchronous)
                .map_err(TickedError::Driver)?
                .is_some()
            {
                break (None, at);
            }
            // Everything that happens at this stop, in the single-step loop's order: input,
            // timers, a halted guest's idling, the injection decision.
            let mut skipped_here = false;
            loop {
                self.stepped_inputs(driver, ticks, !skipped_here)?;
                if let Some(e) = self.devices.serial.take_output_error() {
                    return Err(MachineError::from(e).into());
                }
                if let Some(end) = self.pending_end.take() {
                    break 'run (Some(end), at);
                }
                if halted {
                    match self
                        .idle_while_halted(driver, ticks, &regs, !skipped_here)
                        .map_err(TickedError::Driver)?
                    {
                        Halted::End(end) => break 'run (Some(end), at),
                        Halted::Again => continue,
                        Halted::SkipTo(deadline) => {
                            clock.skipped_ns += deadline.saturating_sub(clock.now_ns(ticks));
                            skipped_here = true;
                            self.now_ns = clock.now_ns(ticks);
                            self.poll_timers();
                        }
                        Halted::Wake => {}
                    }
                }
                let pending = self.devices.pic.has_pending();
                let ready = if halted {
                    regs.rflags & RFLAGS_IF != 0
                } else {
                    self.vcpu.ready_for_interrupt()
                };
                if driver
                    .inject_now(ticks, pending, ready, halted)
                    .map_err(TickedError::Driver)?
                {
                    let vector = self.devices.pic.acknowledge();
                    tracing::debug!(vector, "pmu inject");
                    self.vcpu.inject(vector).map_err(MachineError::from)?;
                    self.stats.interrupts_injected += 1;
                    driver
                        .injected(ticks, vector)
                        .map_err(TickedError::Driver)?;
                    halted = false;
                }
                if !halted {
                    break;
                }
            }
            let window = self.devices.pic.has_pending();
            tracing::debug!(window, "pmu run");
            self.vcpu.request_interrupt_window(window);
            // Run to the next stop.
            let phase = self.run_phase(counter, driver, &at, &clock, margin)?;
            ticks = counter.on(&mut self.vcpu, &self.mem).ticks()?;
            self.now_ns = clock.now_ns(ticks);
            match phase {
                Phase::Async => {
                    async_stops += 1;
                    asynchronous = true;
                }
                Phase::Exit(exit) => {
                    tracing::debug!(?exit, "pmu exit");
                    exits += 1;
                    // An interrupt-window exit is not tied to an instruction on every KVM
                    // (kvm_pvm reports it wherever the host next stopped the vCPU): its stop
                    // is an asynchronous one, which replay converges to exactly instead of
                    // expecting the exit at the same place again.
                    asynchronous = matches!(exit, Exit::IrqWindowOpen);
                    if matches!(exit, Exit::Hlt) {
                        self.stats.hlt_exits += 1;
                        halted = true;
                    } else {
                        let completes = matches!(
                            exit,
                            Exit::IoIn { .. }
                                | Exit::IoOut { .. }
                                | Exit::MmioRead { .. }
                                | Exit::MmioWrite { .. }
                        );
                        self.handle_exit(exit)?;
                        if completes && self.pending_end.is_none() {
                            self.complete_pending_exit()?;
                        }
                    }
                }
            }
        };
        drop(kicker);
        let regs = RegSnapshot::from_regs(&self.vcpu.regs().map_err(MachineError::from)?);
        let digest = self.state_digest(&regs, at.ticks);
        if let Some(end) = &end {
            driver
                .end(at.ticks, end, &regs, digest)
                .map_err(TickedError::Driver)?;
        }
        Ok(TickedReport {
            end,
            position: at,
            final_digest: digest,
            async_stops,
            exits,
            duration: started.elapsed(),
            guest_ns: clock.now_ns(at.ticks),
        })
    }

    /// Runs from the stop `at` to the next one, as the driver's plan says.
    fn run_phase<D: TickDriver>(
        &mut self,
        counter: &mut dyn BranchCounter,
        driver: &mut D,
        at: &TickPosition,
        clock: &TickClock,
        margin: u64,
    ) -> Result<Phase, TickedError<D::Error>> {
        let plan = driver.plan().map_err(TickedError::Driver)?;
        let deadline = self.devices.next_timer_deadline_ns();
        let mut m = counter.on(&mut self.vcpu, &self.mem);
        match plan {
            RunPlan::Free => {
                // The overflow stops the guest at (or a skid after) the deadline's tick.
                if let Some(deadline) = deadline {
                    m.arm_overflow(clock.ticks_at(deadline).max(at.ticks + 1))?;
                }
                let stop = m.run_until_kick();
                m.disarm_overflow()?;
                Ok(match stop? {
                    RunStop::Exit(exit) => Phase::Exit(exit),
                    RunStop::Overflow | RunStop::Kicked => Phase::Async,
                })
            }
            RunPlan::StopAt(target) => match converge(&mut *m, &target, margin, MAX_CONVERGE_STEPS)
            {
                Ok(Converged::Reached { .. }) => Ok(Phase::Async),
                Ok(Converged::Exit(exit)) => Ok(Phase::Exit(exit)),
                Err(ConvergeError::Machine(e)) => Err(e.into()),
                Err(e) => {
                    drop(m);
                    Err(TickedError::Driver(driver.diverged(at, e.to_string())))
                }
            },
            RunPlan::ExitBy(limit) => {
                if let Some(limit) = limit {
                    m.arm_overflow(limit + 1)?;
                }
                let stop = m.run();
                m.disarm_overflow()?;
                match stop? {
                    RunStop::Exit(exit) => Ok(Phase::Exit(exit)),
                    RunStop::Overflow | RunStop::Kicked => {
                        let ticks = m.ticks()?;
                        drop(m);
                        Err(TickedError::Driver(driver.diverged(
                            at,
                            format!(
                                "the recording met a guest exit by ticks {}, and the replay ran \
                                 on to ticks {ticks} without one",
                                limit.unwrap_or_default()
                            ),
                        )))
                    }
                }
            }
        }
    }

    /// Completes the instruction of an I/O or MMIO exit (KVM finishes it on the next
    /// KVM_RUN; with immediate_exit set, that run returns before executing anything else,
    /// or with the single-step trap of that instruction), so every stop is at an
    /// instruction boundary.
    fn complete_pending_exit(&mut self) -> Result<(), MachineError> {
        self.vcpu.set_immediate_exit(true);
        let exit = self.vcpu.run();
        self.vcpu.set_immediate_exit(false);
        match exit? {
            // A single-stepping counter: KVM reports the completed instruction's trap.
            Exit::Interrupted | Exit::Debug { .. } => Ok(()),
            other => Err(MachineError::UnexpectedExit(format!(
                "completing an I/O instruction gave {other:?} instead of returning at once"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_become_the_first_tick_at_or_after_them() {
        let clock = TickClock {
            ns_per_tick: 100,
            skipped_ns: 1_000,
        };
        assert_eq!(clock.now_ns(5), 1_500);
        assert_eq!(clock.ticks_at(1_500), 5);
        assert_eq!(clock.ticks_at(1_501), 6);
        assert_eq!(clock.ticks_at(500), 0);
    }
}
