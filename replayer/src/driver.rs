//! The replay driver: every question the machine asks is answered from the trace, and
//! every answer must match what the machine is doing, else the replay has diverged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ttvm_logs::{EndReason, Event, EventRecord, ReadError, TraceReader};
use ttvm_vmm::machine::digest::RegSnapshot;
use ttvm_vmm::run::singlestep::{BootFacts, HostValueKind, Position, StepDriver, Stop};
use ttvm_vmm::{Machine, RunEnd, SerialPoll};

use crate::divergence::Divergence;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Divergence(Box<Divergence>),
    #[error("reading the trace failed: {0}")]
    Read(#[from] ReadError),
    /// The trace lacks something every recording writes.
    #[error("the trace is damaged: {0}")]
    Damaged(String),
    /// The trace ends (recorder killed) where the machine needs more of it.
    #[error("trace ends early after event {after_event}: recorder did not finish")]
    EndsEarly { after_event: u64 },
}

/// Why the driver stopped the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The trace's events are exhausted and the recorder did not finish.
    EndsEarly { after_event: u64 },
    /// The recording was stopped by its user here.
    RecordingInterrupted,
    /// Our own user stopped the replay.
    UserStop,
    /// The driver reached its target position.
    Target,
    /// The watch predicate asked to stop (a breakpoint or watchpoint).
    Watch,
}

/// A predicate evaluated at every fresh position (before anything happens there); true
/// stops the replay at that position.
pub type Watch = Box<dyn FnMut(Position, &Machine) -> bool>;

pub struct ReplayDriver {
    reader: TraceReader,
    facts: BootFacts,
    /// The next unconsumed event and its index.
    next: Option<(u64, EventRecord)>,
    ends_early: Option<u64>,
    consumed: u64,
    injecting: Option<(u64, u8)>,
    stop: Arc<AtomicBool>,
    target: Option<Position>,
    pub stop_cause: Option<StopCause>,
    last_regs: Option<RegSnapshot>,
    watch: Option<Watch>,
    /// Do not evaluate the watch at this position (the one a resumed run starts at).
    watch_skip: Option<Position>,
    /// Progress lines on stderr (`ttvm replay` on a terminal).
    pub(crate) progress: Option<crate::progress::Progress>,
    /// The position the machine is at, as of its last `boundary` call: everything the
    /// machine does until the next call (a device access, the serial output of an OUT)
    /// is done by the instruction at this position (see `output`).
    position: Arc<AtomicU64>,
}

impl ReplayDriver {
    pub fn new(
        reader: TraceReader,
        facts: BootFacts,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, DriverError> {
        let mut d = ReplayDriver {
            reader,
            facts,
            next: None,
            ends_early: None,
            consumed: 0,
            injecting: None,
            stop,
            target: None,
            stop_cause: None,
            last_regs: None,
            watch: None,
            watch_skip: None,
            progress: None,
            position: Arc::new(AtomicU64::new(0)),
        };
        d.fetch()?;
        Ok(d)
    }

    /// Print progress lines on stderr while replaying.
    pub fn show_progress(&mut self) {
        let total = self
            .reader
            .header()
            .close
            .as_ref()
            .map(|c| c.final_position);
        self.progress = Some(crate::progress::Progress::new(total));
    }

    /// The machine's current position, shared: see [`crate::output::TaggedOutput`].
    pub fn position_cell(&self) -> Arc<AtomicU64> {
        self.position.clone()
    }

    /// Keeps the current position in `cell` from now on (an output made before the driver).
    pub fn set_position_cell(&mut self, cell: Arc<AtomicU64>) {
        self.position = cell;
    }

    /// Stop when the machine reaches `pos` (before anything happens there).
    pub fn set_target(&mut self, pos: Option<Position>) {
        self.target = pos;
    }

    pub fn events_consumed(&self) -> u64 {
        self.consumed
    }

    /// Sets (or clears) the watch predicate; it is not evaluated at `skip` (where a
    /// resumed run starts, so a breakpoint there does not stop it again at once).
    pub fn set_watch(&mut self, watch: Option<Watch>, skip: Option<Position>) {
        self.watch = watch;
        self.watch_skip = skip;
    }

    /// Takes the watch predicate back.
    pub fn take_watch(&mut self) -> Option<Watch> {
        self.watch_skip = None;
        self.watch.take()
    }

    /// Moves to event `cursor` of the trace (after a checkpoint restore at the position
    /// whose first event that is).
    pub fn reposition(&mut self, cursor: u64) -> Result<(), DriverError> {
        self.reader.seek_event(cursor)?;
        self.next = None;
        self.ends_early = None;
        self.consumed = cursor;
        self.injecting = None;
        self.stop_cause = None;
        self.last_regs = None;
        self.fetch()
    }

    /// The next event not yet replayed and its index.
    pub fn next_event(&self) -> Option<(u64, &EventRecord)> {
        self.next.as_ref().map(|(i, r)| (*i, r))
    }

    /// The next unconsumed record.
    pub(crate) fn peek(&self) -> Option<&EventRecord> {
        self.next.as_ref().map(|(_, r)| r)
    }

    /// Where the trace ends early (the recorder did not finish), once the reader met it.
    pub(crate) fn ends_early(&self) -> Option<u64> {
        self.ends_early
    }

    /// Whether our own user asked to stop.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The trace's header.
    pub fn header(&self) -> &ttvm_logs::TraceHeader {
        self.reader.header()
    }

    /// The trace reader (for its checkpoints and counts).
    pub fn reader(&self) -> &TraceReader {
        &self.reader
    }
    fn fetch(&mut self) -> Result<(), DriverError> {
        let index = self.reader.next_index();
        self.next = match self.reader.next_event() {
            Some(Ok(rec)) => Some((index, rec)),
            Some(Err(e)) => match e.ends_early() {
                Some(n) => {
                    self.ends_early = Some(n);
                    None
                }
                None => return Err(e.into()),
            },
            None => None,
        };
        Ok(())
    }

    /// The next event if it is at `pos`.
    pub(crate) fn at(&self, pos: Position) -> Option<&Event> {
        match &self.next {
            Some((_, rec)) if rec.position == pos => Some(&rec.event),
            _ => None,
        }
    }

    pub(crate) fn consume(&mut self) -> Result<(u64, EventRecord), DriverError> {
        let taken = self.next.take();
        self.fetch()?;
        self.consumed += 1;
        taken.ok_or(DriverError::EndsEarly {
            after_event: self.ends_early.unwrap_or(self.consumed),
        })
    }

    pub(crate) fn describe_next(&self) -> String {
        match &self.next {
            Some((i, rec)) => format!("event #{i} at position {}: {:?}", rec.position, rec.event),
            None => match self.ends_early {
                Some(n) => format!("nothing: the trace ends early after event {n}"),
                None => "nothing: the trace has no more events".to_string(),
            },
        }
    }

    pub(crate) fn diverge(&self, pos: Position, expected: String, actual: String) -> DriverError {
        DriverError::Divergence(Box::new(Divergence {
            event_index: self.next.as_ref().map(|(i, _)| *i),
            position: pos,
            expected,
            actual,
            registers: self.last_regs,
            register_diff: Vec::new(),
            hint: None,
        }))
    }

    fn expect_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
    ) -> Result<(u64, bool), DriverError> {
        let value = match (kind, self.at(pos)) {
            (HostValueKind::Rdtsc, Some(Event::Rdtsc { value })) => (*value, true),
            (HostValueKind::Rdtscp, Some(Event::Rdtscp { value, .. })) => (*value, true),
            (HostValueKind::Rdrand, Some(Event::Rdrand { value, ok })) => (*value, *ok),
            (HostValueKind::Rdseed, Some(Event::Rdseed { value, ok })) => (*value, *ok),
            _ => {
                return Err(self.diverge(
                    pos,
                    self.describe_next(),
                    format!("the guest executed {kind:?} at position {pos}"),
                ))
            }
        };
        self.consume()?;
        Ok(value)
    }
}

fn same_end(recorded: &EndReason, actual: &RunEnd) -> bool {
    ttvm_boundary::end_reason(actual) == *recorded
}

impl StepDriver for ReplayDriver {
    type Error = DriverError;

    fn boot(&mut self) -> Result<BootFacts, DriverError> {
        Ok(self.facts)
    }

    fn boundary(&mut self, pos: Position, m: &Machine) -> Result<Option<Stop>, DriverError> {
        self.position.store(pos, Ordering::Relaxed);
        if let Some(progress) = self.progress.as_mut() {
            progress.at(pos, false);
        }
        if self.stop.load(Ordering::Relaxed) {
            self.stop_cause = Some(StopCause::UserStop);
            return Ok(Some(Stop::Interrupted));
        }
        if m.at_fresh_position() {
            if self.target == Some(pos) {
                self.stop_cause = Some(StopCause::Target);
                return Ok(Some(Stop::Reached));
            }
            if self.watch_skip != Some(pos) {
                if let Some(watch) = self.watch.as_mut() {
                    if watch(pos, m) {
                        self.stop_cause = Some(StopCause::Watch);
                        return Ok(Some(Stop::Reached));
                    }
                }
            }
        }
        match &self.next {
            Some((_, rec)) if rec.position < pos => Err(self.diverge(
                pos,
                self.describe_next(),
                format!("the replay reached position {pos} without that event happening"),
            )),
            Some((_, rec))
                if rec.position == pos
                    && matches!(
                        rec.event,
                        Event::End {
                            reason: EndReason::Interrupted
                        }
                    ) =>
            {
                self.consume()?;
                self.stop_cause = Some(StopCause::RecordingInterrupted);
                Ok(Some(Stop::Reached))
            }
            None => match self.ends_early {
                Some(after_event) => {
                    self.stop_cause = Some(StopCause::EndsEarly { after_event });
                    Ok(Some(Stop::Reached))
                }
                None => Err(self.diverge(
                    pos,
                    "the run to have ended (the trace has no more events)".to_string(),
                    format!("the guest is still running at position {pos}"),
                )),
            },
            _ => Ok(None),
        }
    }

    fn serial(&mut self, pos: Position, room: usize) -> Result<SerialPoll, DriverError> {
        match self.at(pos) {
            Some(Event::SerialInput { bytes }) if bytes.len() <= room => {
                let bytes = bytes.clone();
                self.consume()?;
                Ok(SerialPoll::Bytes(bytes))
            }
            Some(Event::SerialInput { bytes }) => {
                let n = bytes.len();
                Err(self.diverge(
                    pos,
                    self.describe_next(),
                    format!("the UART has room for {room} bytes, not {n}"),
                ))
            }
            Some(Event::SerialHangup) => {
                self.consume()?;
                Ok(SerialPoll::Ended)
            }
            _ => Ok(SerialPoll::Nothing),
        }
    }

    fn inject_now(
        &mut self,
        pos: Position,
        pending: bool,
        ready: bool,
        halted: bool,
    ) -> Result<bool, DriverError> {
        let Some(&Event::Interrupt { vector }) = self.at(pos) else {
            if halted && pending && ready {
                // Recording would have injected here; the trace says otherwise, and a
                // halted guest cannot move on by itself.
                return Err(self.diverge(
                    pos,
                    self.describe_next(),
                    format!(
                        "the guest is halted at position {pos} with an interrupt pending that \
                         it can accept, and the trace injects nothing here"
                    ),
                ));
            }
            return Ok(false);
        };
        if !pending || !ready {
            let why = if !pending {
                "no interrupt is pending in the interrupt controllers"
            } else {
                "the guest cannot accept an interrupt (IF clear or interrupt shadow)"
            };
            return Err(self.diverge(
                pos,
                self.describe_next(),
                format!("at position {pos} {why}"),
            ));
        }
        let (index, _) = self.consume()?;
        self.injecting = Some((index, vector));
        Ok(true)
    }

    fn injected(&mut self, pos: Position, vector: u8) -> Result<(), DriverError> {
        match self.injecting.take() {
            Some((_, recorded)) if recorded == vector => Ok(()),
            Some((index, recorded)) => Err(DriverError::Divergence(Box::new(Divergence {
                event_index: Some(index),
                position: pos,
                expected: format!("interrupt vector {recorded:#x}"),
                actual: format!("the interrupt controllers delivered vector {vector:#x}"),
                registers: self.last_regs,
                register_diff: Vec::new(),
                hint: None,
            }))),
            None => Err(self.diverge(
                pos,
                self.describe_next(),
                format!("an interrupt {vector:#x} was injected"),
            )),
        }
    }

    fn host_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
        _virtual: u64,
    ) -> Result<(u64, bool), DriverError> {
        self.expect_value(pos, kind)
    }

    fn snapshot(&mut self, pos: Position, regs: &RegSnapshot) -> Result<(), DriverError> {
        self.last_regs = Some(*regs);
        match self.at(pos) {
            Some(Event::Registers { regs: recorded }) => {
                let Ok(recorded) = <[u64; 18]>::try_from(recorded.as_slice()) else {
                    return Err(self.diverge(
                        pos,
                        format!("a register snapshot of {} registers", recorded.len()),
                        "this ttvm records 18".to_string(),
                    ));
                };
                let recorded = RegSnapshot(recorded);
                if recorded != *regs {
                    let mut d = match self.diverge(
                        pos,
                        format!("registers rip={:#x}", recorded.rip()),
                        format!("registers rip={:#x}", regs.rip()),
                    ) {
                        DriverError::Divergence(d) => d,
                        other => return Err(other),
                    };
                    d.register_diff = recorded.diff(regs);
                    return Err(DriverError::Divergence(d));
                }
                self.consume()?;
            }
            Some(&Event::StateDigest { digest }) => {
                // Older traces: a digest of the registers.
                let actual = regs.digest(pos);
                if digest != actual {
                    return Err(self.diverge(
                        pos,
                        format!("state digest {digest:#018x}"),
                        format!("state digest {actual:#018x}"),
                    ));
                }
                self.consume()?;
            }
            _ => {}
        }
        Ok(())
    }

    fn wait_for_input(&mut self, pos: Position) -> Result<(), DriverError> {
        if self.next.is_none() {
            if let Some(after_event) = self.ends_early {
                return Err(DriverError::EndsEarly { after_event });
            }
        }
        Err(self.diverge(
            pos,
            self.describe_next(),
            format!(
                "the guest is halted at position {pos} waiting for input the trace does not give"
            ),
        ))
    }

    fn idle(
        &mut self,
        _pos: Position,
        _deadline: u64,
        _can_receive: bool,
    ) -> Result<bool, DriverError> {
        // Input arrives when the trace says; time never waits.
        Ok(false)
    }

    fn end(
        &mut self,
        pos: Position,
        end: &RunEnd,
        regs: &RegSnapshot,
        digest: u64,
    ) -> Result<(), DriverError> {
        self.last_regs = Some(*regs);
        match self.at(pos) {
            Some(&Event::StateDigest { digest: recorded }) => {
                if recorded != digest {
                    return Err(self.diverge(
                        pos,
                        format!("final state digest {recorded:#018x} (registers, memory, devices)"),
                        format!("final state digest {digest:#018x}"),
                    ));
                }
                self.consume()?;
            }
            // Every recording logs the digest right before a guest's end: without it the
            // final state would go unchecked.
            Some(Event::End { reason }) if same_end(reason, end) => {
                let index = self.next.as_ref().map_or(0, |(i, _)| *i);
                return Err(DriverError::Damaged(format!(
                    "its end event (#{index} at position {pos}) is not preceded by the final \
                     state digest every recording writes, so the final state cannot be checked"
                )));
            }
            _ => {}
        }
        match self.at(pos) {
            Some(Event::End { reason }) if same_end(reason, end) => {
                self.consume()?;
                Ok(())
            }
            _ => Err(self.diverge(
                pos,
                self.describe_next(),
                format!("the run ended at position {pos}: {end}"),
            )),
        }
    }
}
