//! Replaying a pmu-clock trace: the guest runs freely between stops; each recorded
//! `pmu_stop` is met again, either by running to the guest exit it was (checked against the
//! recorded ticks, RIP and RCX) or by converging to it exactly (an overflow or a kick in the
//! recording), and what the recording did there is done again.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ttvm_boundary::clock::pmu_time;
use ttvm_logs::{ClockParams, EndReason, Event, PmuCounter, PmuParams, TraceHeader, TraceReader};
use ttvm_vmm::host::kvm as host_kvm;
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::run::pmu::emulated::EmulatedCounter;
use ttvm_vmm::run::pmu::kvm::PerfState;
use ttvm_vmm::run::pmu::perf::PerfBranchCounter;
use ttvm_vmm::run::pmu::ticked::{RunPlan, TickDriver, TickedError};
use ttvm_vmm::run::pmu::{BranchCounter, TickPosition};
use ttvm_vmm::run::singlestep::Stop;

use crate::driver::{DriverError, ReplayDriver, StopCause};
use crate::{driver_error, machine_for, pmu_refusal, Replay, ReplayError, ReplayResult};

impl TickDriver for ReplayDriver {
    fn stop_at(
        &mut self,
        at: &TickPosition,
        asynchronous: bool,
    ) -> Result<Option<Stop>, DriverError> {
        if let Some(progress) = self.progress.as_mut() {
            progress.at(at.ticks, true);
        }
        if self.stop_requested() {
            self.stop_cause = Some(StopCause::UserStop);
            return Ok(Some(Stop::Interrupted));
        }
        let recorded = self.peek().map(|rec| (rec.position, rec.event.clone()));
        match recorded {
            Some((
                ticks,
                Event::PmuStop {
                    rip,
                    rcx,
                    asynchronous: a,
                },
            )) if ticks == at.ticks && rip == at.rip && rcx == at.rcx && a == asynchronous => {
                self.consume()?;
            }
            Some((ticks, _)) if ticks < at.ticks => {
                return Err(self.diverge(
                    at.ticks,
                    self.describe_next(),
                    format!("the replay reached {at} without stopping there"),
                ))
            }
            None => {
                return match self.ends_early() {
                    Some(after_event) => {
                        self.stop_cause = Some(StopCause::EndsEarly { after_event });
                        Ok(Some(Stop::Reached))
                    }
                    None => Err(self.diverge(
                        at.ticks,
                        "the run to have ended (the trace has no more events)".to_string(),
                        format!("the guest is still running at {at}"),
                    )),
                }
            }
            _ => return Ok(None),
        }
        if let Some(Event::End {
            reason: EndReason::Interrupted,
        }) = self.at(at.ticks)
        {
            self.consume()?;
            self.stop_cause = Some(StopCause::RecordingInterrupted);
            return Ok(Some(Stop::Reached));
        }
        Ok(None)
    }

    fn plan(&mut self) -> Result<RunPlan, DriverError> {
        Ok(match self.peek() {
            Some(rec) => match rec.event {
                Event::PmuStop {
                    rip,
                    rcx,
                    asynchronous: true,
                } => RunPlan::StopAt(TickPosition {
                    ticks: rec.position,
                    rip,
                    rcx,
                }),
                _ => RunPlan::ExitBy(Some(rec.position)),
            },
            None => match self.ends_early() {
                Some(after_event) => return Err(DriverError::EndsEarly { after_event }),
                None => RunPlan::ExitBy(None),
            },
        })
    }

    fn diverged(&mut self, at: &TickPosition, what: String) -> DriverError {
        self.diverge(at.ticks, self.describe_next(), format!("at {at}: {what}"))
    }
}

/// Under the pmu clock the guest runs freely, and two inputs cannot be recorded through
/// KVM's API: said with every divergence of such a trace.
const PMU_DIVERGENCE_HINT: &str = "this trace uses the pmu clock, under which the guest \
    reads the host's TSC directly (RDTSC/RDTSCP/RDMSR cannot be trapped while it runs \
    freely, so their values are not in the trace): a guest whose path or memory depends on \
    the TSC replays differently (so does one that uses RDRAND/RDSEED on a KVM that answers \
    CPUID itself, as PVM does, ignoring the table that hides them). Record such a guest with \
    --clock singlestep";

/// The counter a pmu-clock trace needs, if this host can give it.
fn counter_for(params: &PmuParams) -> Result<Box<dyn BranchCounter>, ReplayError> {
    match &params.counter {
        PmuCounter::Emulated => {
            // The software counter single-steps: its positions depend on the KVM.
            let recorded_kvm = &params.kvm_module;
            let here = host_kvm::kvm_module();
            if *recorded_kvm != here {
                return Err(ReplayError::Unsupported(format!(
                    "it was recorded with the emulated branch counter on {recorded_kvm}, and \
                     this host runs {here}: the counter single-steps, and single steps differ \
                     between KVM implementations"
                )));
            }
            let max_skid = params.skid.saturating_sub(1);
            Ok(Box::new(EmulatedCounter::new(max_skid, 0x7e91a7)))
        }
        PmuCounter::Hardware { vendor, event } => {
            let probe = ttvm_vmm::run::pmu::probe::probe();
            match probe.event.filter(|_| probe.error.is_none()) {
                Some(here) if here.vendor == *vendor && here.config == *event => {
                    let opened = PerfBranchCounter::open(&here).map_err(|e| {
                        ReplayError::Unsupported(format!(
                            "cannot open the guest branch counter: {e}"
                        ))
                    })?;
                    Ok(Box::new(PerfState::new(opened)))
                }
                _ => Err(ReplayError::Unsupported(pmu_refusal(&params.counter))),
            }
        }
    }
}

/// Replays the pmu-clock trace `reader` (of `trace`) from the start to its end.
pub(crate) fn replay(
    trace: &Path,
    reader: TraceReader,
    serial_out: SerialOutput,
    stop: Arc<AtomicBool>,
    progress: bool,
) -> Result<Replay, ReplayError> {
    let ClockParams::Pmu(params) = &reader.header().clock.params else {
        return Err(ReplayError::Unsupported(
            "it is not a pmu-clock trace".to_string(),
        ));
    };
    let mut counter = counter_for(params)?;
    let (time, facts) = pmu_time(params);
    let mut machine = machine_for(&reader, serial_out)?;
    let mut driver = ReplayDriver::new(reader, facts, stop).map_err(driver_error)?;
    if progress {
        driver.show_progress();
    }
    let report = match machine.run_ticked(&mut *counter, &mut driver, time) {
        Ok(report) => report,
        Err(TickedError::Driver(DriverError::EndsEarly { after_event })) => {
            return Ok(Replay {
                result: ReplayResult::EndsEarly { after_event },
                trace: trace.to_path_buf(),
                position: 0,
                events: driver.events_consumed(),
                final_digest: String::new(),
                seconds: 0.0,
                end: None,
            });
        }
        Err(TickedError::Driver(DriverError::Divergence(mut d))) => {
            d.hint = Some(PMU_DIVERGENCE_HINT.to_string());
            return Err(ReplayError::Divergence(d));
        }
        Err(TickedError::Driver(e)) => return Err(driver_error(e)),
        Err(TickedError::Machine(e)) => return Err(e.into()),
        Err(e @ TickedError::Counter(_)) => return Err(ReplayError::Counter(e.to_string())),
    };
    Ok(Replay {
        result: crate::result_of(&report.end, driver.stop_cause),
        trace: trace.to_path_buf(),
        position: report.position.ticks,
        events: driver.events_consumed(),
        final_digest: format!("{:#018x}", report.final_digest),
        seconds: report.duration.as_secs_f64(),
        end: report.end,
    })
}

/// Whether `header` is a pmu-clock trace.
pub(crate) fn is_pmu(header: &TraceHeader) -> bool {
    matches!(header.clock.params, ClockParams::Pmu(_))
}
