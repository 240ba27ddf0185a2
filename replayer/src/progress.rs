//! Progress lines for long replays: where the replay is, of how far the recording went, and
//! how fast, every couple of seconds on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(2);
/// Positions between two looks at the clock.
const CHECK_POSITIONS: u64 = 1 << 10;

#[derive(Debug, Clone)]
pub struct Progress {
    /// The recording's final position, if the trace was closed.
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
    last_check: u64,
}

impl Progress {
    pub fn new(total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            last_line: now,
            last_check: 0,
        }
    }

    /// The replay is at `pos`; prints a line if one is due. `every_call`: look at the clock
    /// at every call (the pmu clock's stops are far apart), not every 1024 positions.
    pub fn at(&mut self, pos: u64, every_call: bool) {
        if !every_call && pos.wrapping_sub(self.last_check) < CHECK_POSITIONS {
            return;
        }
        self.last_check = pos;
        let now = Instant::now();
        if now.duration_since(self.last_line) < EVERY {
            return;
        }
        self.last_line = now;
        let _ = writeln!(std::io::stderr(), "ttvm: {}", self.line(pos, now));
    }

    fn line(&self, pos: u64, now: Instant) -> String {
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let rate = pos as f64 / secs;
        match self.total {
            Some(total) if total > 0 => format!(
                "replaying: position {pos} of {total} ({:.0} %), {rate:.0} positions/s",
                (pos as f64 * 100.0 / total as f64).min(100.0)
            ),
            _ => format!("replaying: position {pos}, {rate:.0} positions/s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_where_of_how_far_and_how_fast() {
        let p = Progress::new(Some(1000));
        let later = p.started + Duration::from_secs(2);
        assert_eq!(
            p.line(250, later),
            "replaying: position 250 of 1000 (25 %), 125 positions/s"
        );
        let open = Progress::new(None);
        let line = open.line(10, open.started + Duration::from_secs(1));
        assert_eq!(line, "replaying: position 10, 10 positions/s");
    }
}
