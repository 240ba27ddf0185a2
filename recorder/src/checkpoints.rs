//! Checkpoints taken while recording, written into the trace: every `CheckpointEvery`
//! positions or seconds, a full one every `FULL_EVERY`-th time and otherwise only the pages
//! the guest dirtied since the previous one (chained by parent id).

use std::time::{Duration, Instant};

use ttvm_logs::{CheckpointId, TraceWriter, WriteError};
use ttvm_vmm::machine::snapshot::{Snapshot, SnapshotError};
use ttvm_vmm::run::singlestep::Position;
use ttvm_vmm::Machine;

/// Every this many checkpoints is a full one (bounds the chain a seek must load, and
/// how much one damaged file costs).
pub const FULL_EVERY: u32 = 8;

/// Default spacing: at this host's ~10 us per replayed step, 30,000 positions replay in
/// about 0.3 s, so a seek anywhere costs one restore plus at most that.
pub const DEFAULT_EVERY_STEPS: u64 = 30_000;

/// How often to checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointEvery {
    Never,
    Steps(u64),
    Seconds(f64),
}

impl Default for CheckpointEvery {
    fn default() -> Self {
        CheckpointEvery::Steps(DEFAULT_EVERY_STEPS)
    }
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;

    /// `30000` (positions), `0.5s` (seconds of recording), `never` or `0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "never" || t == "0" {
            return Ok(CheckpointEvery::Never);
        }
        if let Some(secs) = t.strip_suffix('s') {
            return match secs.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Ok(CheckpointEvery::Seconds(v)),
                _ => Err(format!(
                    "{s:?}: seconds must be a positive number, e.g. 0.5s"
                )),
            };
        }
        match t.parse::<u64>() {
            Ok(n) => Ok(CheckpointEvery::Steps(n)),
            Err(_) => Err(format!(
                "{s:?} is not a checkpoint interval: use positions (30000), seconds (0.5s) or never"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("taking a checkpoint failed: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("writing a checkpoint failed: {0}")]
    Write(#[from] WriteError),
}

/// Figures for the closing summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    pub count: u32,
    pub full: u32,
    pub bytes: u64,
    pub time: Duration,
}

pub struct Checkpointer {
    every: CheckpointEvery,
    last: Option<(CheckpointId, Position, Instant)>,
    taken: u32,
    started: Instant,
    pub stats: CheckpointStats,
}

impl Checkpointer {
    pub fn new(every: CheckpointEvery) -> Self {
        Checkpointer {
            every,
            last: None,
            taken: 0,
            started: Instant::now(),
            stats: CheckpointStats::default(),
        }
    }

    /// Whether a checkpoint is due at `pos`.
    pub fn due(&self, pos: Position) -> bool {
        let (since_pos, since_time) = match self.last {
            Some((_, p, t)) => (p, t),
            None => (0, self.started),
        };
        match self.every {
            CheckpointEvery::Never => false,
            CheckpointEvery::Steps(n) => n > 0 && pos >= since_pos + n,
            CheckpointEvery::Seconds(s) => {
                pos > since_pos && since_time.elapsed().as_secs_f64() >= s
            }
        }
    }

    /// Takes a checkpoint of `machine` (at a fresh position) and writes it to the trace;
    /// `cursor` is the number of events written so far.
    pub fn take(
        &mut self,
        machine: &mut Machine,
        writer: &mut TraceWriter,
        cursor: u64,
    ) -> Result<CheckpointId, CheckpointError> {
        let t0 = Instant::now();
        let pos = machine.position();
        let state = machine.save_state(cursor)?;
        let dirty = machine.take_dirty_pages()?;
        let full = self.taken.is_multiple_of(FULL_EVERY) || self.last.is_none();
        let (memory, parent) = if full {
            (machine.capture_all_pages()?, None)
        } else {
            (
                machine.capture_pages(dirty)?,
                self.last.map(|(id, _, _)| id.0),
            )
        };
        let snapshot = Snapshot {
            state,
            parent,
            memory,
        };
        let bytes = snapshot.encode()?;
        let id = writer.add_checkpoint(pos, &bytes)?;
        self.taken += 1;
        self.last = Some((id, pos, Instant::now()));
        self.stats.count += 1;
        self.stats.full += u32::from(full);
        self.stats.bytes += bytes.len() as u64;
        self.stats.time += t0.elapsed();
        tracing::debug!(
            pos,
            id = id.0,
            full,
            pages = snapshot.memory.pages.len(),
            "checkpoint written"
        );
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!("30000".parse(), Ok(CheckpointEvery::Steps(30000)));
        assert_eq!("0.5s".parse(), Ok(CheckpointEvery::Seconds(0.5)));
        assert_eq!("never".parse(), Ok(CheckpointEvery::Never));
        assert_eq!("0".parse(), Ok(CheckpointEvery::Never));
        for bad in ["", "x", "-1", "0s", "-2s", "1.5", "nans"] {
            assert!(bad.parse::<CheckpointEvery>().is_err(), "{bad:?}");
        }
    }
}
