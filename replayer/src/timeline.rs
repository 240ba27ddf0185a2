//! The timeline: a replayed trace that can be moved to any position. `seek(p)` restores
//! the nearest checkpoint at or before `p` (the replayer's own, or one of the trace's) and
//! replays forward exactly to `p`, taking checkpoints of its own on the way so that moving
//! back again is cheap. Reverse execution is built on it: nothing ever runs backwards.
//!
//! The guest's serial output is shown as forward execution (`run_forward`, gdb's continue
//! and steps) passes it, each byte once: moving back and executing the same stretch again
//! shows nothing new. Jumps (`seek`, and the replays reverse execution does internally)
//! show nothing; the output up to any position is in the output index (`output`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ttvm_logs::CheckpointId;
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::machine::snapshot::{Snapshot, SnapshotError};
use ttvm_vmm::run::singlestep::{Position, SteppedError, Stop};
use ttvm_vmm::{Machine, RunEnd};

use crate::driver::{DriverError, ReplayDriver, StopCause, Watch};
use crate::shown::Shown;
use crate::store::{CheckpointStore, Node, NodeId, Origin, PagePlan, StoreError};
use crate::{prepare, ReplayError};

/// Default memory budget for the replayer's own checkpoints.
pub const DEFAULT_CHECKPOINT_MEM: usize = 256 << 20;
/// Default spacing of the replayer's own checkpoints: about 0.1 s of replay on this host,
/// the most a reverse-stepi ever replays.
pub const DEFAULT_REPLAY_INTERVAL: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct TimelineOptions {
    /// Memory budget of the replayer's checkpoints, in bytes.
    pub checkpoint_mem: usize,
    /// Positions between the replayer's own checkpoints.
    pub interval: u64,
    /// Use the checkpoints stored in the trace (off: every seek starts from the
    /// replayer's own checkpoints, which begin with the boot state).
    pub trace_checkpoints: bool,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions {
            checkpoint_mem: DEFAULT_CHECKPOINT_MEM,
            interval: DEFAULT_REPLAY_INTERVAL,
            trace_checkpoints: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("checkpoint: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("trace checkpoint {id}: {detail}")]
    TraceCheckpoint { id: u32, detail: String },
}

impl TimelineError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TimelineError::Replay(e) => e.exit_code(),
            _ => ttvm_vmm::exit_code::VMM_ERROR,
        }
    }
}

fn stepped_error(e: SteppedError<DriverError>) -> TimelineError {
    match e {
        SteppedError::Machine(m) => ReplayError::Machine(m).into(),
        SteppedError::Driver(d) => crate::driver_error(d).into(),
    }
}

/// Where a move along the timeline stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// At the asked position.
    Target,
    /// The watch predicate fired here.
    Watch,
    /// The guest's run ended here (the end of the recording).
    End(RunEnd),
    /// The trace stops here: the recording was interrupted, or the trace ends early.
    TraceStops,
    /// The user interrupted the replay.
    Interrupted,
}

/// A trace checkpoint file as the timeline knows it.
#[derive(Debug, Clone)]
pub struct TraceCheckpoint {
    pub id: u32,
    pub position: Position,
    pub disk_size: u64,
    /// Why it cannot be used (damaged file, or beyond the readable events).
    pub unusable: Option<String>,
}

/// Serial output that can be muted while positions already shown are replayed again.
struct Gate {
    out: Mutex<SerialOutput>,
    muted: AtomicBool,
}

struct GatedOutput(Arc<Gate>);

impl Write for GatedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.muted.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        match self.0.out.lock() {
            Ok(mut out) => out.write(buf),
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.out.lock() {
            Ok(mut out) => out.flush(),
            Err(_) => Ok(()),
        }
    }
}

/// Figures about the timeline's work, for monitor commands and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimelineStats {
    pub restores: u64,
    pub pages_restored: u64,
    pub checkpoints_taken: u64,
    pub steps_replayed: u64,
    pub restore_time: Duration,
    pub checkpoint_time: Duration,
}

pub struct Timeline {
    machine: Machine,
    driver: ReplayDriver,
    store: CheckpointStore,
    trace_dir: PathBuf,
    trace_checkpoints: Vec<TraceCheckpoint>,
    interval: u64,
    gate: Arc<Gate>,
    /// The stretches whose output forward execution has shown.
    shown: Shown,
    /// Where and how the recording ends, once replayed that far.
    end: Option<(Position, Arrival)>,
    pub stats: TimelineStats,
    /// Problems met and worked around (damaged trace checkpoints), for the user.
    pub warnings: Vec<String>,
}

impl Timeline {
    /// Opens `trace` at position 0.
    pub fn open(
        trace: &Path,
        serial_out: SerialOutput,
        stop: Arc<AtomicBool>,
        opts: TimelineOptions,
    ) -> Result<Timeline, TimelineError> {
        let gate = Arc::new(Gate {
            out: Mutex::new(serial_out),
            muted: AtomicBool::new(false),
        });
        let (mut machine, reader, time, facts) =
            prepare(trace, Box::new(GatedOutput(gate.clone())))?;
        let listed = if opts.trace_checkpoints {
            reader.checkpoints().map_err(ReplayError::Open)?
        } else {
            Vec::new()
        };
        let mut driver = ReplayDriver::new(reader, facts, stop).map_err(crate::driver_error)?;
        machine
            .begin_stepped(&mut driver, time)
            .map_err(stepped_error)?;
        let state = machine.save_state(0)?;
        let pages = machine.capture_all_pages()?;
        machine.take_dirty_pages()?;
        let mut store = CheckpointStore::new(opts.checkpoint_mem);
        store.insert(
            Node {
                position: 0,
                state: Arc::new(state),
                parent: None,
                pages,
                origin: Origin::Boot,
            },
            true,
        );
        let trace_checkpoints = listed
            .into_iter()
            .map(|c| TraceCheckpoint {
                id: c.id.0,
                position: c.position,
                disk_size: c.disk_size,
                unusable: None,
            })
            .collect();
        Ok(Timeline {
            machine,
            driver,
            store,
            trace_dir: trace.to_path_buf(),
            trace_checkpoints,
            interval: opts.interval.max(1),
            gate,
            shown: Shown::default(),
            end: None,
            stats: TimelineStats::default(),
            warnings: Vec::new(),
        })
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn driver(&self) -> &ReplayDriver {
        &self.driver
    }

    pub fn trace_dir(&self) -> &Path {
        &self.trace_dir
    }

    pub fn position(&self) -> Position {
        self.machine.position()
    }

    /// The recording's end, once the replay has been there.
    pub fn known_end(&self) -> Option<&(Position, Arrival)> {
        self.end.as_ref()
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    pub fn trace_checkpoints(&self) -> &[TraceCheckpoint] {
        &self.trace_checkpoints
    }

    /// Digest of the whole machine (registers, memory, devices) at the current position.
    pub fn digest(&self) -> u64 {
        let regs = self
            .machine
            .stepped_regs()
            .unwrap_or(ttvm_vmm::machine::digest::RegSnapshot([0; 18]));
        self.machine.state_digest(&regs, self.position())
    }

    /// The index of the next trace event to be replayed.
    pub fn event_index(&self) -> u64 {
        self.driver.events_consumed()
    }

    /// Moves to `target`. Past the end of the recording it stops at the end. A seek is a
    /// jump: it may restore a later checkpoint, and it shows no serial output.
    pub fn seek(&mut self, target: Position) -> Result<Arrival, TimelineError> {
        self.move_to(target, None, false)
    }

    /// Moves to the start of the trace.
    pub fn seek_start(&mut self) -> Result<Arrival, TimelineError> {
        self.seek(0)
    }

    /// Moves to the end of the recording.
    pub fn seek_end(&mut self) -> Result<Arrival, TimelineError> {
        self.seek(Position::MAX)
    }

    /// Moves to the position of trace event `n` (before it happens).
    pub fn seek_event(&mut self, n: u64) -> Result<Arrival, TimelineError> {
        let pos = event_position(&self.trace_dir, n)?;
        self.seek(pos)
    }

    /// Runs forward from the current position until `watch` fires (not evaluated at the
    /// current position), `limit` is reached, or the recording ends, executing every
    /// position and showing the serial output not shown before.
    pub fn run_forward(
        &mut self,
        watch: Watch,
        limit: Option<Position>,
    ) -> Result<Arrival, TimelineError> {
        let target = limit.unwrap_or(Position::MAX);
        self.move_to(target, Some(watch), true)
    }

    /// The last position before `before` where `probe` returns true, replaying earlier
    /// and earlier stretches until one has a hit (None: no hit since the start). Within a
    /// stretch `probe` sees every fresh position once, in order; a new stretch starts at a
    /// lower position (probes with state reset when the position jumps). Leaves the
    /// timeline somewhere before `before`: the caller seeks where it wants.
    pub fn find_last<P>(
        &mut self,
        before: Position,
        probe: Rc<RefCell<P>>,
    ) -> Result<Option<Position>, TimelineError>
    where
        P: FnMut(Position, &Machine) -> bool + 'static,
    {
        let mut hi = before;
        while hi > 0 {
            // The stretch: from the best checkpoint at least one interval back to `hi`.
            let lo = self.best_start(hi.saturating_sub(self.interval).min(hi - 1))?;
            if self.seek(lo)? != Arrival::Target {
                return Ok(None);
            }
            let hits = Rc::new(RefCell::new(Vec::<Position>::new()));
            // The watch skips the start position: probe it here.
            if (probe.borrow_mut())(lo, &self.machine) {
                hits.borrow_mut().push(lo);
            }
            let (sink, p) = (hits.clone(), probe.clone());
            let watch: Watch = Box::new(move |pos, m| {
                if pos < hi && (p.borrow_mut())(pos, m) {
                    sink.borrow_mut().push(pos);
                }
                false
            });
            self.move_to(hi, Some(watch), false)?;
            let last = hits.borrow().last().copied();
            if last.is_some() {
                return Ok(last);
            }
            hi = lo;
        }
        Ok(None)
    }

    /// The position of the checkpoint a seek to `pos` would start from.
    fn best_start(&mut self, pos: Position) -> Result<Position, TimelineError> {
        let mem = self
            .store
            .best_at_or_before(pos)
            .and_then(|id| self.store.get(id))
            .map_or(0, |n| n.position);
        let disk = self
            .best_trace_checkpoint(pos)
            .map_or(0, |i| self.trace_checkpoints[i].position);
        Ok(mem.max(disk))
    }

    fn best_trace_checkpoint(&self, pos: Position) -> Option<usize> {
        self.trace_checkpoints
            .iter()
            .enumerate()
            .filter(|(_, c)| c.position <= pos && c.unusable.is_none())
            .max_by_key(|(_, c)| c.position)
            .map(|(i, _)| i)
    }

    /// Moves to `target`; `echo`: this is forward execution from the current position,
    /// whose serial output is shown.
    fn move_to(
        &mut self,
        target: Position,
        watch: Option<Watch>,
        echo: bool,
    ) -> Result<Arrival, TimelineError> {
        let echo_from = echo.then(|| self.position());
        let mut target = target;
        if let Some((end_pos, arrival)) = &self.end {
            if target >= *end_pos {
                if watch.is_none() && self.position() == *end_pos {
                    return Ok(arrival.clone());
                }
                target = *end_pos;
            }
        }
        let cur = self.position();
        let resumable =
            !self.machine.stepped_ended() && self.machine.at_fresh_position() && cur <= target;
        // Without a watch, a checkpoint between here and the target is a shortcut (the
        // guest's output in between is skipped); a watch must see every position.
        let shortcut = watch.is_none() && self.best_start(target)? > cur;
        if !resumable || shortcut {
            self.restore_best(target)?;
        }
        if watch.is_none() && self.position() == target {
            return Ok(self.arrival_at_target());
        }
        let skip = Some(self.position());
        self.driver.set_watch(watch, skip);
        let result = self.run_to(target, echo_from);
        self.driver.set_watch(None, None);
        match result? {
            Arrival::Target => Ok(self.arrival_at_target()),
            other => Ok(other),
        }
    }

    /// Arriving at a target that is the recording's end reports the end.
    fn arrival_at_target(&self) -> Arrival {
        match &self.end {
            Some((end_pos, arrival)) if *end_pos == self.position() => arrival.clone(),
            _ => Arrival::Target,
        }
    }

    /// Restores the best usable checkpoint at or before `target`, loading trace
    /// checkpoints as needed and falling back past damaged ones.
    fn restore_best(&mut self, target: Position) -> Result<(), TimelineError> {
        loop {
            let mem = self.store.best_at_or_before(target);
            let mem_pos = mem
                .and_then(|id| self.store.get(id))
                .map_or(0, |n| n.position);
            let disk = self.best_trace_checkpoint(target);
            let node = match disk {
                Some(i) if self.trace_checkpoints[i].position > mem_pos => {
                    match self.load_trace_checkpoint(self.trace_checkpoints[i].id) {
                        Ok(node) => node,
                        Err(e) => {
                            let why = match e {
                                TimelineError::TraceCheckpoint { detail, .. } => detail,
                                other => other.to_string(),
                            };
                            let msg = format!(
                                "trace checkpoint {} at position {} is unusable ({why}); \
                                 replaying from an earlier point instead",
                                self.trace_checkpoints[i].id, self.trace_checkpoints[i].position
                            );
                            // Logged once here; front ends show `warnings` only in reports.
                            tracing::warn!("{msg}");
                            self.warnings.push(msg);
                            self.trace_checkpoints[i].unusable = Some(why);
                            continue;
                        }
                    }
                }
                _ => match mem {
                    Some(id) => id,
                    None => unreachable!("the boot node is never evicted"),
                },
            };
            return self.restore(node);
        }
    }

    /// Loads trace checkpoint `id` (and the chain it is a delta of) into the store.
    fn load_trace_checkpoint(&mut self, id: u32) -> Result<NodeId, TimelineError> {
        if let Some(node) = self.store.trace_node(id) {
            return Ok(node);
        }
        let bad = |detail: String| TimelineError::TraceCheckpoint { id, detail };
        let (position, bytes) = self
            .driver
            .reader()
            .read_checkpoint(CheckpointId(id))
            .map_err(|e| bad(e.to_string()))?;
        let snap = Snapshot::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        if snap.state.position != position {
            return Err(bad(format!(
                "its file says position {position}, its content {}",
                snap.state.position
            )));
        }
        if snap.state.cursor > self.driver.reader().event_count() {
            return Err(bad(format!(
                "it needs {} events and the trace has {}",
                snap.state.cursor,
                self.driver.reader().event_count()
            )));
        }
        let parent = match (snap.parent, snap.memory.full) {
            (_, true) | (None, _) => None,
            (Some(p), false) => Some(
                self.load_trace_checkpoint(p)
                    .map_err(|e| bad(format!("its parent checkpoint {p}: {e}")))?,
            ),
        };
        if !snap.memory.full && parent.is_none() {
            return Err(bad("a delta checkpoint without a parent".to_string()));
        }
        Ok(self.store.insert(
            Node {
                position,
                state: Arc::new(snap.state),
                parent,
                pages: snap.memory,
                origin: Origin::Trace(id),
            },
            false,
        ))
    }

    fn restore(&mut self, id: NodeId) -> Result<(), TimelineError> {
        let t0 = Instant::now();
        let dirty = self.machine.take_dirty_pages()?;
        let plan = self.store.plan(id, dirty)?;
        let pages: Vec<u32> = match plan {
            PagePlan::Pages(p) => p.into_iter().collect(),
            PagePlan::All => (0..self.machine.page_count()).collect(),
        };
        for &n in &pages {
            let page = self.store.page_at(id, n)?;
            self.machine.write_pages([(n, page)])?;
        }
        let node = self.store.get(id).ok_or(StoreError::Missing(id))?;
        let state = node.state.clone();
        self.machine.restore_state(&state)?;
        self.driver
            .reposition(state.cursor)
            .map_err(crate::driver_error)?;
        self.store.set_anchor(id);
        self.stats.restores += 1;
        self.stats.pages_restored += pages.len() as u64;
        self.stats.restore_time += t0.elapsed();
        tracing::debug!(
            node = id,
            position = state.position,
            pages = pages.len(),
            "checkpoint restored"
        );
        Ok(())
    }

    /// Takes a replayer checkpoint at the current (fresh) position.
    pub fn take_checkpoint(&mut self) -> Result<(), TimelineError> {
        let t0 = Instant::now();
        let pos = self.position();
        if let Some(id) = self.store.best_at_or_before(pos) {
            if self.store.get(id).is_some_and(|n| n.position == pos) {
                return Ok(());
            }
        }
        let state = self.machine.save_state(self.driver.events_consumed())?;
        let dirty: BTreeSet<u32> = self.machine.take_dirty_pages()?;
        let (pages, parent) = match self.store.anchor() {
            Some(anchor) => {
                self.store.add_dirty(dirty);
                let changed = self.store.take_extra_dirty();
                (self.machine.capture_pages(changed)?, Some(anchor))
            }
            None => (self.machine.capture_all_pages()?, None),
        };
        self.store.insert(
            Node {
                position: pos,
                state: Arc::new(state),
                parent,
                pages,
                origin: Origin::Replay,
            },
            true,
        );
        self.store.enforce_budget(pos, self.interval);
        self.stats.checkpoints_taken += 1;
        self.stats.checkpoint_time += t0.elapsed();
        Ok(())
    }

    /// Replays forward from the current position to `target`, taking checkpoints every
    /// interval, showing the output of positions from `echo_from` on not shown before.
    fn run_to(
        &mut self,
        target: Position,
        echo_from: Option<Position>,
    ) -> Result<Arrival, TimelineError> {
        loop {
            let pos = self.position();
            if self.machine.stepped_ended() {
                return Ok(self
                    .end
                    .as_ref()
                    .map_or(Arrival::TraceStops, |(_, a)| a.clone()));
            }
            if pos == target && self.machine.at_fresh_position() {
                return Ok(Arrival::Target);
            }
            let last_ckpt = self
                .store
                .best_at_or_before(pos)
                .and_then(|id| self.store.get(id))
                .map_or(0, |n| n.position);
            let next_ckpt = last_ckpt + self.interval;
            let mut stop_at = target.min(next_ckpt);
            // Stop where muting changes: at `echo_from`, at either end of a shown stretch.
            let (muted, change) = match echo_from {
                None => (true, None),
                Some(from) if pos < from => (true, Some(from)),
                Some(_) => match self.shown.end_of(pos) {
                    Some(end) => (true, Some(end)),
                    None => (false, self.shown.next_start(pos)),
                },
            };
            if let Some(change) = change {
                stop_at = stop_at.min(change);
            }
            self.gate.muted.store(muted, Ordering::Relaxed);
            self.driver.set_target(Some(stop_at));
            self.driver.stop_cause = None;
            let out = self.machine.continue_stepped(&mut self.driver);
            self.gate.muted.store(false, Ordering::Relaxed);
            let out = out.map_err(stepped_error)?;
            let now = self.position();
            self.stats.steps_replayed += now.saturating_sub(pos);
            if !muted {
                // The instruction that ended the guest ran too.
                let end = if out.end.is_some() { now + 1 } else { now };
                self.shown.insert(pos, end);
            }
            if let Some(end) = out.end {
                let arrival = Arrival::End(end);
                self.end = Some((now, arrival.clone()));
                return Ok(arrival);
            }
            match (out.stop, self.driver.stop_cause) {
                (Some(Stop::Interrupted), _) => return Ok(Arrival::Interrupted),
                (_, Some(StopCause::Watch)) => return Ok(Arrival::Watch),
                (_, Some(StopCause::RecordingInterrupted | StopCause::EndsEarly { .. })) => {
                    self.end = Some((now, Arrival::TraceStops));
                    return Ok(Arrival::TraceStops);
                }
                (_, Some(StopCause::UserStop)) => return Ok(Arrival::Interrupted),
                _ => {}
            }
            if now == next_ckpt {
                self.take_checkpoint()?;
            }
        }
    }
}

/// The position of event `n` of the trace at `dir`.
fn event_position(dir: &Path, n: u64) -> Result<Position, TimelineError> {
    let mut reader = ttvm_logs::TraceReader::open(dir).map_err(ReplayError::Open)?;
    reader.seek_event(n).map_err(ReplayError::Open)?;
    match reader.next_event() {
        Some(Ok(rec)) => Ok(rec.position),
        Some(Err(e)) => Err(ReplayError::Open(e).into()),
        None => Err(ReplayError::Unsupported(format!(
            "the trace has no event {n} (it has {})",
            reader.event_count()
        ))
        .into()),
    }
}
