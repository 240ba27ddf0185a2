//! The recording driver: the live host answers, and every answer is logged at its position.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ttvm_logs::{Event, EventRecord, TraceWriter, WriteError};
use ttvm_vmm::machine::digest::RegSnapshot;
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::singlestep::{BootFacts, HostValueKind, Position, StepDriver, Stop};
use ttvm_vmm::{Machine, RunEnd, SerialPoll};

use crate::checkpoints::{CheckpointError, CheckpointEvery, Checkpointer};
use ttvm_boundary::end_reason;

/// How often (in steps) the driver looks at the wall clock for flushing and progress:
/// about every 8 ms at this host's 7.5 us per step, well inside the 100 ms flush rule.
const TICK_STEPS: u64 = 1 << 10;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Longest uninterrupted wait while the guest idles (the trace's flush interval).
const IDLE_SLICE_NS: u64 = 100_000_000;

pub struct RecordingDriver<'w> {
    live: LiveDriver,
    facts: BootFacts,
    writer: &'w mut TraceWriter,
    stop: Arc<AtomicBool>,
    progress: bool,
    started: Instant,
    last_progress: Instant,
    pub(crate) steps_at_last_tick: u64,
    pub(crate) checkpointer: Checkpointer,
    /// Pmu clock: the current stop's marker, logged before the first event at that stop.
    pub(crate) pending_stop: Option<EventRecord>,
}

impl<'w> RecordingDriver<'w> {
    pub fn new(
        live: LiveDriver,
        facts: BootFacts,
        writer: &'w mut TraceWriter,
        stop: Arc<AtomicBool>,
        progress: bool,
        checkpoints: CheckpointEvery,
    ) -> Self {
        let now = Instant::now();
        RecordingDriver {
            live,
            facts,
            writer,
            stop,
            progress,
            started: now,
            last_progress: now,
            steps_at_last_tick: 0,
            checkpointer: Checkpointer::new(checkpoints),
            pending_stop: None,
        }
    }

    /// Takes the checkpoint that `boundary` stopped for. A checkpoint the machine cannot
    /// take is reported once and checkpointing stops (the recording itself goes on); a
    /// checkpoint that cannot be written is a trace write failure.
    pub(crate) fn take_checkpoint(&mut self, machine: &mut Machine) -> Result<(), WriteError> {
        let cursor = self.writer.event_count();
        match self.checkpointer.take(machine, self.writer, cursor) {
            Ok(_) => Ok(()),
            Err(CheckpointError::Write(e)) => Err(e),
            Err(CheckpointError::Snapshot(e)) => {
                tracing::warn!("no more checkpoints in this trace: {e}");
                let _ = writeln!(
                    std::io::stderr(),
                    "ttvm: warning: no more checkpoints in this trace: {e}"
                );
                self.checkpointer = Checkpointer::new(CheckpointEvery::Never);
                Ok(())
            }
        }
    }

    pub(crate) fn log(&mut self, position: Position, event: Event) -> Result<(), WriteError> {
        if let Some(stop) = self.pending_stop.take() {
            self.writer.push(stop)?;
        }
        self.writer.push(EventRecord { position, event })
    }

    pub(crate) fn push(&mut self, record: EventRecord) -> Result<(), WriteError> {
        self.writer.push(record)
    }

    /// Flushes the trace and reports progress every so often, and says whether the user
    /// asked to stop.
    pub(crate) fn tick_and_check_stop(&mut self, pos: Position) -> Result<bool, WriteError> {
        if pos.wrapping_sub(self.steps_at_last_tick) >= TICK_STEPS {
            self.steps_at_last_tick = pos;
            self.writer.tick()?;
            self.report_progress(pos);
        }
        Ok(self.stop.load(Ordering::Relaxed))
    }

    pub(crate) fn live_mut(&mut self) -> &mut LiveDriver {
        &mut self.live
    }

    pub(crate) fn trace_dir(&self) -> &std::path::Path {
        self.writer.dir()
    }

    fn report_progress(&mut self, pos: Position) {
        let now = Instant::now();
        if !self.progress || now.duration_since(self.last_progress) < PROGRESS_EVERY {
            return;
        }
        self.last_progress = now;
        let secs = now.duration_since(self.started).as_secs_f64();
        let _ = writeln!(
            std::io::stderr(),
            "ttvm: recording: position {pos}, {} events, {:.0} positions/s",
            self.writer.event_count(),
            pos as f64 / secs.max(1e-9)
        );
    }
}

impl StepDriver for RecordingDriver<'_> {
    type Error = WriteError;

    fn boot(&mut self) -> Result<BootFacts, WriteError> {
        Ok(self.facts)
    }

    fn boundary(&mut self, pos: Position, m: &Machine) -> Result<Option<Stop>, WriteError> {
        if self.tick_and_check_stop(pos)? {
            return Ok(Some(Stop::Interrupted));
        }
        Ok((m.at_fresh_position() && self.checkpointer.due(pos)).then_some(Stop::Reached))
    }

    fn serial(&mut self, pos: Position, room: usize) -> Result<SerialPoll, WriteError> {
        let Ok(poll) = self.live.serial(pos, room);
        match &poll {
            SerialPoll::Bytes(bytes) => self.log(
                pos,
                Event::SerialInput {
                    bytes: bytes.clone(),
                },
            )?,
            SerialPoll::Ended => self.log(pos, Event::SerialHangup)?,
            SerialPoll::Nothing => {}
        }
        Ok(poll)
    }

    fn inject_now(
        &mut self,
        pos: Position,
        pending: bool,
        ready: bool,
        halted: bool,
    ) -> Result<bool, WriteError> {
        let Ok(now) = self.live.inject_now(pos, pending, ready, halted);
        Ok(now)
    }

    fn injected(&mut self, pos: Position, vector: u8) -> Result<(), WriteError> {
        self.log(pos, Event::Interrupt { vector })
    }

    fn host_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
        virtual_value: u64,
    ) -> Result<(u64, bool), WriteError> {
        let Ok((value, ok)) = self.live.host_value(pos, kind, virtual_value);
        let event = match kind {
            HostValueKind::Rdtsc => Event::Rdtsc { value },
            HostValueKind::Rdtscp => Event::Rdtscp { value, aux: 0 },
            HostValueKind::Rdrand => Event::Rdrand { value, ok },
            HostValueKind::Rdseed => Event::Rdseed { value, ok },
        };
        self.log(pos, event)?;
        Ok((value, ok))
    }

    fn snapshot(&mut self, pos: Position, regs: &RegSnapshot) -> Result<(), WriteError> {
        self.log(
            pos,
            Event::Registers {
                regs: regs.0.to_vec(),
            },
        )
    }

    fn wait_for_input(&mut self, pos: Position) -> Result<(), WriteError> {
        // Nothing else will happen until input arrives: make everything so far durable.
        self.writer.flush()?;
        let Ok(()) = self.live.wait_for_input(pos);
        Ok(())
    }

    fn idle(
        &mut self,
        pos: Position,
        deadline_ns: u64,
        can_receive: bool,
    ) -> Result<bool, WriteError> {
        // Wait in slices so the trace is still flushed every 100 ms while the guest idles.
        self.writer.tick()?;
        loop {
            let slice_end = deadline_ns.min(self.live.host_ns().saturating_add(IDLE_SLICE_NS));
            let Ok(input) = self.live.idle(pos, slice_end, can_receive);
            if input {
                return Ok(true);
            }
            if slice_end >= deadline_ns {
                return Ok(false);
            }
            self.writer.tick()?;
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
        }
    }

    fn end(
        &mut self,
        pos: Position,
        end: &RunEnd,
        _regs: &RegSnapshot,
        digest: u64,
    ) -> Result<(), WriteError> {
        self.log(pos, Event::StateDigest { digest })?;
        self.log(
            pos,
            Event::End {
                reason: end_reason(end),
            },
        )
    }
}
