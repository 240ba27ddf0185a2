//! Recording with the pmu clock: the guest runs freely, counted by a branch counter (the
//! CPU's, or ttvm's software stand-in), and every stop where something entered the guest
//! is logged as a `pmu_stop` marker followed by what happened there (see
//! `ttvm_vmm::run::pmu::ticked`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ttvm_logs::{CloseInfo, Event, EventRecord, TraceWriter, WriteError};
use ttvm_vmm::host::kvm as host_kvm;
use ttvm_vmm::machine::cpuid::hide_untrappable_randomness;
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::run::kick::KickHandle;
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::pmu::emulated::EmulatedCounter;
use ttvm_vmm::run::pmu::kvm::PerfState;
use ttvm_vmm::run::pmu::perf::PerfBranchCounter;
use ttvm_vmm::run::pmu::ticked::{RunPlan, TickDriver, TickTime, TickedError};
use ttvm_vmm::run::pmu::{BranchCounter, TickPosition};
use ttvm_vmm::run::singlestep::{StepDriver, Stop};
use ttvm_vmm::{Machine, SerialSource};

use crate::checkpoints::{CheckpointEvery, CheckpointStats};
use crate::driver::RecordingDriver;
use crate::{
    close_after_vmm_error, end_reason_logged, trace_meta, RecordClock, RecordError, RecordOptions,
    Recording,
};
use ttvm_boundary::clock::{hardware_counter, pmu_clock};
use ttvm_logs::PmuCounter;

impl TickDriver for RecordingDriver<'_> {
    fn stop_at(
        &mut self,
        at: &TickPosition,
        asynchronous: bool,
    ) -> Result<Option<Stop>, WriteError> {
        let interrupted = self.tick_and_check_stop(at.ticks)?;
        let marker = EventRecord {
            position: at.ticks,
            event: Event::PmuStop {
                rip: at.rip,
                rcx: at.rcx,
                asynchronous,
            },
        };
        // A guest exit happens again by itself in replay: its stop is logged only if
        // something happens there. An overflow or a kick is logged always (replay must stop
        // there too, since devices are polled at every stop), and so is the stop where the
        // user ended the recording.
        if asynchronous || interrupted {
            self.pending_stop = None;
            self.push(marker)?;
        } else {
            self.pending_stop = Some(marker);
        }
        Ok(interrupted.then_some(Stop::Interrupted))
    }

    fn plan(&mut self) -> Result<RunPlan, WriteError> {
        Ok(RunPlan::Free)
    }

    fn diverged(&mut self, at: &TickPosition, what: String) -> WriteError {
        // Only replay plans can diverge; a recording never asks.
        WriteError::Io {
            op: "record at",
            path: self.trace_dir().join(at.to_string()),
            source: std::io::Error::other(what),
        }
    }

    fn set_kick(&mut self, kick: KickHandle) {
        self.live_mut().set_kick(kick);
    }
}

/// Records `image` with the pmu clock `opts.clock` (not `Singlestep`).
pub(crate) fn record(
    opts: RecordOptions,
    image: &[u8],
    serial_out: SerialOutput,
    serial_in: SerialSource,
    stop: Arc<AtomicBool>,
) -> Result<Recording, RecordError> {
    // The guest runs freely: RDRAND/RDSEED cannot be trapped, so the guest is told they do
    // not exist. Bad input fails in Machine::new, before a trace directory is created.
    let mut config = opts.machine.clone();
    let mut cpuid = Machine::guest_cpuid(&config)?;
    hide_untrappable_randomness(&mut cpuid);
    config.cpuid = Some(cpuid);
    let mut machine = Machine::new(config, image, serial_out)?;
    let (mut counter, counter_info): (Box<dyn BranchCounter>, _) = match &opts.clock {
        RecordClock::Pmu(event) => {
            let state = PerfState::new(PerfBranchCounter::open(event)?);
            (Box::new(state), hardware_counter(event))
        }
        RecordClock::PmuEmulated { max_skid, seed } => {
            let counter = EmulatedCounter::new(*max_skid, *seed);
            (Box::new(counter), PmuCounter::Emulated)
        }
        RecordClock::Singlestep => unreachable!("the single-step clock records elsewhere"),
    };
    let mut live = LiveDriver::new(serial_in);
    let Ok(facts) = live.boot();
    let time = TickTime {
        ns_per_tick: opts.time.ns_per_step,
    };
    let margin = counter.margin();
    let clock = pmu_clock(time, facts, &host_kvm::kvm_module(), counter_info, margin);
    let meta = trace_meta(&opts, &machine, clock);
    let mut writer = TraceWriter::create(&opts.location, &meta, image)?;
    if let Some(initrd) = &opts.machine.initrd {
        writer.embed_initrd(&initrd.name, &initrd.bytes)?;
    }
    let trace_dir = writer.dir().to_path_buf();
    let outcome = {
        let mut driver = RecordingDriver::new(
            live,
            facts,
            &mut writer,
            stop,
            opts.progress,
            CheckpointEvery::Never,
        );
        machine.run_ticked(&mut *counter, &mut driver, time)
    };
    let report = match outcome {
        Ok(report) => report,
        Err(TickedError::Driver(e)) => return Err(e.into()),
        Err(e) => {
            // The position is not known after a failure: the last logged one stands.
            let position = writer.last_position();
            close_after_vmm_error(writer, position, &e)?;
            return Err(match e {
                TickedError::Machine(e) => e.into(),
                TickedError::Counter(e) => e.into(),
                TickedError::Driver(e) => e.into(),
            });
        }
    };
    let position = report.position.ticks;
    let end_reason = end_reason_logged(&mut writer, report.end.as_ref(), position)?;
    let stats = machine.stats();
    let mut counters = BTreeMap::new();
    counters.insert("ticks".to_string(), position);
    counters.insert("async_stops".to_string(), report.async_stops);
    counters.insert("exits".to_string(), report.exits);
    counters.insert("interrupts_injected".to_string(), stats.interrupts_injected);
    counters.insert("pio_exits".to_string(), stats.pio_exits);
    counters.insert("guest_ns".to_string(), report.guest_ns);
    let summary = writer.finish(CloseInfo {
        end_reason,
        final_position: position,
        duration: report.duration,
        counters,
    })?;
    Ok(Recording {
        trace_dir,
        end: report.end,
        steps: position,
        position_unit: "ticks",
        events: summary.event_count,
        duration: report.duration,
        checkpoints: CheckpointStats::default(),
        chaos: None,
    })
}
