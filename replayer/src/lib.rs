//! `ttvm-replayer`: re-runs a recorded trace on the same machine code, injecting every
//! recorded input at exactly its position, and reports the first divergence.

pub mod divergence;
pub mod driver;
pub mod output;
pub mod progress;
pub mod shown;
pub mod store;
pub mod ticked;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use ttvm_logs::{ReadError, TraceHeader, TraceReader};
use ttvm_vmm::host::kvm as host_kvm;
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::run::singlestep::{BootFacts, Position, SteppedError, TimeConfig};
use ttvm_vmm::{Initrd, Machine, MachineError, RunEnd};

pub use divergence::Divergence;
use driver::{DriverError, ReplayDriver, StopCause};

use ttvm_boundary::clock::{same_merges, singlestep_time};
use ttvm_logs::{ClockParams, PmuCounter, SinglestepParams};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open the trace: {0}")]
    Open(#[from] ReadError),
    #[error("cannot replay this trace: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{0}")]
    Divergence(Box<Divergence>),
    #[error("reading the trace failed during replay: {0}")]
    Read(ReadError),
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Counter(String),
}

impl ReplayError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ReplayError::Divergence(_) => ttvm_vmm::exit_code::DIVERGENCE,
            _ => ttvm_vmm::exit_code::VMM_ERROR,
        }
    }
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayResult {
    /// The guest ended exactly as recorded.
    Reproduced { end: String, exit_code: i32 },
    /// The trace ends before the recorded run did; everything up to it replayed.
    EndsEarly { after_event: u64 },
    /// The recording was stopped by its user at this point, and so is the replay.
    RecordingInterrupted,
    /// The replay was stopped by its user, or reached its target.
    Stopped,
}

/// A finished replay.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    #[serde(flatten)]
    pub result: ReplayResult,
    pub trace: PathBuf,
    pub position: Position,
    pub events: u64,
    pub final_digest: String,
    pub seconds: f64,
    #[serde(skip)]
    pub end: Option<RunEnd>,
}

impl Replay {
    /// The process exit code: the guest's own for a reproduced run.
    pub fn exit_code(&self) -> i32 {
        match &self.result {
            ReplayResult::Reproduced { exit_code, .. } => *exit_code,
            ReplayResult::EndsEarly { .. } => ttvm_vmm::exit_code::TRACE_ENDS_EARLY,
            ReplayResult::RecordingInterrupted | ReplayResult::Stopped => {
                ttvm_vmm::exit_code::INTERRUPTED
            }
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// Why a trace of the performance-counter clock cannot be replayed here: the counter's
/// semantics (vendor, event) must be reproducible on this host first.
pub(crate) fn pmu_refusal(counter: &PmuCounter) -> String {
    let (vendor, event) = match counter {
        PmuCounter::Hardware { vendor, event } => (vendor.as_str(), format!("{event:#x}")),
        PmuCounter::Emulated => ("ttvm", "software".to_string()),
    };
    let recorded = format!("it was recorded with the pmu clock (event {event} on {vendor})");
    let probe = ttvm_vmm::run::pmu::probe::probe();
    match (&probe.event, &probe.error) {
        (_, Some(why)) => {
            format!("{recorded}, and this host cannot count guest branches: {why}")
        }
        (None, None) => format!("{recorded}, and this host's CPU has no known branch event"),
        (Some(here), None) if here.vendor != vendor || format!("{:#x}", here.config) != event => {
            format!(
                "{recorded}, and this host counts {:#x} on {}: branch counts of different \
                 events or CPU vendors are not the same positions",
                here.config, here.vendor
            )
        }
        (Some(_), None) => format!("{recorded}, and this host counts the same event"),
    }
}

/// Why a pmu-clock trace cannot be seeked in (nor debugged with gdb).
pub(crate) fn no_seeking_in_pmu_traces() -> ReplayError {
    ReplayError::Unsupported(
        "it was recorded with the pmu clock: `ttvm replay TRACE` replays it from start to \
         end, but seeking (--goto, gdb) needs checkpoints at single-step positions, which \
         only --clock singlestep recordings have"
            .to_string(),
    )
}

/// The single-step clock's parameters of `header`, if this host can reproduce that clock
/// (for the single-step loop and seeking).
fn singlestep_params(header: &TraceHeader) -> Result<&SinglestepParams, ReplayError> {
    let params = match &header.clock.params {
        ClockParams::Pmu(_) => return Err(no_seeking_in_pmu_traces()),
        ClockParams::Singlestep(params) => params,
    };
    let recorded_kvm = &params.kvm_module;
    let here = host_kvm::kvm_module();
    if *recorded_kvm != here {
        return Err(ReplayError::Unsupported(format!(
            "it was recorded on {recorded_kvm} and this host runs {here}: single-step positions \
             differ between KVM implementations (rep-string granularity, interrupt-entry step), \
             so the replay could not follow the recording"
        )));
    }
    Ok(params)
}

/// Checks that this host can reproduce the trace's clock (for the single-step loop and
/// seeking); returns its time settings.
pub fn check_clock(header: &TraceHeader) -> Result<(TimeConfig, BootFacts), ReplayError> {
    Ok(singlestep_time(singlestep_params(header)?))
}

/// Opens `trace` for replay: a trace whose close record contradicts its events is
/// refused as damaged before anything runs.
pub(crate) fn open_checked(trace: &Path) -> Result<TraceReader, ReplayError> {
    let reader = TraceReader::open(trace)?;
    reader.check_close()?;
    Ok(reader)
}

/// Opens `trace` and builds the machine it was recorded on.
pub fn prepare(
    trace: &Path,
    serial_out: SerialOutput,
) -> Result<(Machine, TraceReader, TimeConfig, BootFacts), ReplayError> {
    prepare_reader(open_checked(trace)?, serial_out)
}

/// [`prepare`] for a trace already open.
pub(crate) fn prepare_reader(
    reader: TraceReader,
    serial_out: SerialOutput,
) -> Result<(Machine, TraceReader, TimeConfig, BootFacts), ReplayError> {
    let (time, facts) = check_clock(reader.header())?;
    let mut machine = machine_for(&reader, serial_out)?;
    check_step_semantics(reader.header(), &mut machine)?;
    Ok((machine, reader, time, facts))
}

/// Builds the machine `reader`'s trace was recorded on (memory, command line, CPUID).
pub(crate) fn machine_for(
    reader: &TraceReader,
    serial_out: SerialOutput,
) -> Result<Machine, ReplayError> {
    let header = reader.header();
    let image = reader.guest_image()?;
    let initrd = reader.initrd()?.map(|bytes| Initrd {
        name: header
            .initrd
            .as_ref()
            .map_or_else(String::new, |i| i.name.clone()),
        bytes: bytes.into(),
    });
    let config = ttvm_boundary::machine_config(header, initrd);
    Ok(Machine::new(config, &image, serial_out)?)
}

fn check_step_semantics(header: &TraceHeader, machine: &mut Machine) -> Result<(), ReplayError> {
    // Same KVM module but different stepping behaviour (another kernel version, other
    // module parameters): positions would not line up either.
    let ClockParams::Singlestep(params) = &header.clock.params else {
        return Ok(());
    };
    if let Some(recorded) = params.step_rearm {
        let semantics = machine.probe_step_semantics().map_err(MachineError::from)?;
        let here = semantics.rearm_each_step;
        let merges_here = semantics.merges;
        let merges_recorded = params.step_merges.as_ref().map(|m| m.join(","));
        let same = match &params.step_merges {
            Some(recorded) => same_merges(recorded, &merges_here.names()),
            None => merges_here.is_empty(),
        };
        if !same {
            return Err(ReplayError::Unsupported(format!(
                "it was recorded on a KVM that runs [{}] together with the next instruction \
                 in one single step, and this one runs [{}] so: positions would not line up{}",
                merges_recorded
                    .as_deref()
                    .unwrap_or("unknown (an older ttvm)"),
                merges_here.names(),
                if merges_recorded.is_none() {
                    "; re-record it with this ttvm"
                } else {
                    ""
                }
            )));
        }
        if recorded != here {
            return Err(ReplayError::Unsupported(format!(
                "it was recorded on a KVM whose single-step {} re-arming before every step, \
                 and this one {}: positions would not line up",
                if recorded { "needed" } else { "did not need" },
                if here { "needs it" } else { "does not" },
            )));
        }
        let watched_here = semantics.watched_exceptions();
        if here && params.step_exception_breakpoints.as_deref() != Some(watched_here) {
            return Err(ReplayError::Unsupported(format!(
                "on this kind of KVM (single-step by the guest's trap flag, which exception \
                 delivery clears) it was recorded stopping at the handlers of exceptions {} \
                 and this ttvm here stops at {watched_here:?}: positions would not line up{}",
                match &params.step_exception_breakpoints {
                    Some(v) => format!("{v:?}"),
                    None =>
                        "[] (an older ttvm, which also ran interrupt handlers unseen)".to_string(),
                },
                if params.step_exception_breakpoints.is_none() {
                    "; re-record it with this ttvm"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// Replays `trace` from the start to its end (or `target`), writing the guest's serial
/// output to `serial_out`.
pub fn replay(
    trace: &Path,
    serial_out: SerialOutput,
    stop: Arc<AtomicBool>,
    target: Option<Position>,
) -> Result<Replay, ReplayError> {
    replay_with_progress(trace, serial_out, stop, target, false)
}

/// [`replay`], printing progress lines on stderr every couple of seconds if `progress`.
pub fn replay_with_progress(
    trace: &Path,
    serial_out: SerialOutput,
    stop: Arc<AtomicBool>,
    target: Option<Position>,
    progress: bool,
) -> Result<Replay, ReplayError> {
    let reader = open_checked(trace)?;
    if ticked::is_pmu(reader.header()) {
        if target.is_some() {
            return Err(no_seeking_in_pmu_traces());
        }
        return ticked::replay(trace, reader, serial_out, stop, progress);
    }
    let (mut machine, reader, time, facts) = prepare_reader(reader, serial_out)?;
    let mut driver = ReplayDriver::new(reader, facts, stop).map_err(driver_error)?;
    driver.set_target(target);
    if progress {
        driver.show_progress();
    }
    let report = match machine.run_stepped(&mut driver, time) {
        Ok(report) => report,
        Err(SteppedError::Machine(e)) => return Err(e.into()),
        Err(SteppedError::Driver(DriverError::EndsEarly { after_event })) => {
            driver.stop_cause = Some(StopCause::EndsEarly { after_event });
            let position = machine.position();
            return Ok(Replay {
                result: ReplayResult::EndsEarly { after_event },
                trace: trace.to_path_buf(),
                position,
                events: driver.events_consumed(),
                final_digest: String::new(),
                seconds: 0.0,
                end: None,
            });
        }
        Err(SteppedError::Driver(e)) => return Err(driver_error(e)),
    };
    Ok(Replay {
        result: result_of(&report.end, driver.stop_cause),
        trace: trace.to_path_buf(),
        position: report.position,
        events: driver.events_consumed(),
        final_digest: format!("{:#018x}", report.final_digest),
        seconds: report.duration.as_secs_f64(),
        end: report.end,
    })
}

/// How a replay that ended with `end` and stopped for `cause` turned out.
pub(crate) fn result_of(end: &Option<RunEnd>, cause: Option<StopCause>) -> ReplayResult {
    match (end, cause) {
        (Some(end), _) => ReplayResult::Reproduced {
            end: end.to_string(),
            exit_code: end.exit_code(),
        },
        (None, Some(StopCause::EndsEarly { after_event })) => {
            ReplayResult::EndsEarly { after_event }
        }
        (None, Some(StopCause::RecordingInterrupted)) => ReplayResult::RecordingInterrupted,
        (None, _) => ReplayResult::Stopped,
    }
}

pub(crate) fn driver_error(e: DriverError) -> ReplayError {
    match e {
        DriverError::Divergence(d) => ReplayError::Divergence(d),
        DriverError::Read(r) => ReplayError::Read(r),
        e @ DriverError::Damaged(_) => ReplayError::Damaged(e.to_string()),
        DriverError::EndsEarly { after_event } => ReplayError::Unsupported(format!(
            "trace ends early after event {after_event}: recorder did not finish"
        )),
    }
}
