//! `ttvm-recorder`: runs the machine under a position clock (single-step, or the pmu
//! clock in `ticked`) against the real world and writes a trace: every nondeterministic
//! input with the exact position it arrived at.

pub mod chaos;
pub mod checkpoints;
pub mod clock_choice;
pub mod driver;
mod ticked;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ttvm_logs::{
    ClockInfo, CloseInfo, EndReason, Event, EventRecord, LocationError, TraceLocation, TraceMeta,
    TraceWriter, WriteError,
};
use ttvm_vmm::host::kvm as host_kvm;
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::singlestep::{StepDriver, SteppedError, TimeConfig};
use ttvm_vmm::{Machine, MachineConfig, MachineError, RunEnd, SerialSource};

use crate::chaos::{ChaosDriver, ChaosPlan};
use crate::checkpoints::{CheckpointEvery, CheckpointStats};
pub use crate::clock_choice::RecordClock;
use crate::driver::RecordingDriver;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("writing the trace failed: {0}")]
    Write(#[from] WriteError),
    #[error("cannot open the guest branch counter: {0}")]
    CounterOpen(#[from] ttvm_vmm::run::pmu::perf::PerfError),
    #[error("branch counter: {0}")]
    Counter(#[from] ttvm_vmm::run::pmu::kvm::KvmTickError),
}

/// What to record.
pub struct RecordOptions {
    pub machine: MachineConfig,
    pub time: TimeConfig,
    /// Chaos recording with this seed (see [`chaos`]); it overrides `time`'s rate.
    pub chaos: Option<u64>,
    /// Name of the guest (trace directory `<name>-<n>`).
    pub guest_name: String,
    /// File name of the guest image, for the header.
    pub image_name: String,
    pub location: TraceLocation,
    /// Print progress lines on stderr during long recordings.
    pub progress: bool,
    /// How often to write a checkpoint into the trace (single-step clock only).
    pub checkpoints: CheckpointEvery,
    /// The position clock.
    pub clock: RecordClock,
}

/// A finished recording.
#[derive(Debug, Clone)]
pub struct Recording {
    pub trace_dir: PathBuf,
    /// How the guest ended (None: stopped by the user).
    pub end: Option<RunEnd>,
    /// The final position: single steps, or ticks under the pmu clock.
    pub steps: u64,
    /// What `steps` counts ("steps" or "ticks").
    pub position_unit: &'static str,
    pub events: u64,
    pub duration: Duration,
    pub checkpoints: CheckpointStats,
    /// The chaos plan of a chaos recording.
    pub chaos: Option<ChaosPlan>,
}

impl Recording {
    pub fn exit_code(&self) -> i32 {
        self.end
            .as_ref()
            .map_or(ttvm_vmm::exit_code::INTERRUPTED, RunEnd::exit_code)
    }
}

/// The trace header's description of this recording.
pub(crate) fn trace_meta(opts: &RecordOptions, machine: &Machine, clock: ClockInfo) -> TraceMeta {
    ttvm_boundary::trace_meta(&opts.guest_name, &opts.image_name, machine, clock)
}

/// A VMM failure is still an end worth keeping: closes the trace with it.
pub(crate) fn close_after_vmm_error(
    mut writer: TraceWriter,
    position: u64,
    e: &dyn std::error::Error,
) -> Result<(), WriteError> {
    let message = e.to_string();
    writer.push(EventRecord {
        position,
        event: Event::End {
            reason: EndReason::VmmError {
                message: message.clone(),
            },
        },
    })?;
    writer.finish(CloseInfo {
        end_reason: EndReason::VmmError { message },
        final_position: position,
        duration: Duration::ZERO,
        counters: BTreeMap::new(),
    })?;
    Ok(())
}

/// The trace's end reason for a run that ended with `end` (None: stopped by the user, which
/// is logged here; a guest end was logged by the driver).
pub(crate) fn end_reason_logged(
    writer: &mut TraceWriter,
    end: Option<&RunEnd>,
    position: u64,
) -> Result<EndReason, WriteError> {
    Ok(match end {
        Some(end) => ttvm_boundary::end_reason(end),
        None => {
            let reason = EndReason::Interrupted;
            writer.push(EventRecord {
                position,
                event: Event::End {
                    reason: reason.clone(),
                },
            })?;
            reason
        }
    })
}

/// Records `image` to a new trace. `stop` ends the recording cleanly when set (Ctrl-C).
pub fn record(
    opts: RecordOptions,
    image: &[u8],
    serial_out: SerialOutput,
    serial_in: SerialSource,
    stop: Arc<AtomicBool>,
) -> Result<Recording, RecordError> {
    if opts.clock != RecordClock::Singlestep {
        return ticked::record(opts, image, serial_out, serial_in, stop);
    }
    // Build the machine first: bad input fails before a trace directory is created.
    let mut machine = Machine::new(opts.machine.clone(), image, serial_out)?;
    let mut live = LiveDriver::new(serial_in);
    let Ok(facts) = live.boot();
    let plan = opts.chaos.map(|seed| ChaosPlan::new(seed, opts.time));
    let (time, facts) = match &plan {
        Some(plan) => (plan.time(), plan.boot_facts(facts)),
        None => (opts.time, facts),
    };
    let kvm_module = host_kvm::kvm_module();
    let semantics = machine.probe_step_semantics().map_err(MachineError::from)?;
    let mut clock = ttvm_boundary::clock::singlestep_clock(time, facts, &kvm_module, semantics);
    if let Some(plan) = &plan {
        plan.annotate(&mut clock);
    }
    let meta = trace_meta(&opts, &machine, clock);
    let mut writer = TraceWriter::create(&opts.location, &meta, image)?;
    if let Some(initrd) = &opts.machine.initrd {
        writer.embed_initrd(&initrd.name, &initrd.bytes)?;
    }
    let trace_dir = writer.dir().to_path_buf();
    let checkpoint_stats: CheckpointStats;
    let mut chaos_stats = None;
    let outcome = {
        let driver = RecordingDriver::new(
            live,
            facts,
            &mut writer,
            stop,
            opts.progress,
            opts.checkpoints,
        );
        // The first checkpoint is a full one, so the dirty log needs no start.
        match &plan {
            Some(plan) => {
                let mut chaos = ChaosDriver::new(driver, plan);
                let outcome = machine.run_stepped_with(&mut chaos, time, |m, d| {
                    d.inner_mut().take_checkpoint(m)?;
                    Ok(true)
                });
                chaos_stats = Some(chaos.stats());
                checkpoint_stats = chaos.inner_mut().checkpointer.stats;
                outcome
            }
            None => {
                let mut driver = driver;
                let outcome = machine.run_stepped_with(&mut driver, time, |m, d| {
                    d.take_checkpoint(m)?;
                    Ok(true)
                });
                checkpoint_stats = driver.checkpointer.stats;
                outcome
            }
        }
    };
    let report = match outcome {
        Ok(report) => report,
        Err(SteppedError::Driver(e)) => return Err(e.into()),
        Err(SteppedError::Machine(e)) => {
            close_after_vmm_error(writer, machine.position(), &e)?;
            return Err(e.into());
        }
    };
    let end_reason = end_reason_logged(&mut writer, report.end.as_ref(), report.position)?;
    let stats = machine.stats();
    let mut counters = BTreeMap::new();
    counters.insert("steps".to_string(), report.position);
    counters.insert("emulated_instructions".to_string(), report.emulated);
    counters.insert("interrupts_injected".to_string(), stats.interrupts_injected);
    counters.insert("pio_exits".to_string(), stats.pio_exits);
    counters.insert("guest_ns".to_string(), report.guest_ns);
    for (name, value) in chaos_stats.iter().flat_map(|s| s.counters()) {
        counters.insert(name.to_string(), value);
    }
    let summary = writer.finish(CloseInfo {
        end_reason,
        final_position: report.position,
        duration: report.duration,
        counters,
    })?;
    Ok(Recording {
        trace_dir,
        end: report.end,
        steps: report.position,
        position_unit: "steps",
        events: summary.event_count,
        duration: report.duration,
        checkpoints: checkpoint_stats,
        chaos: plan,
    })
}
