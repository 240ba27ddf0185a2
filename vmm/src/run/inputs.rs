//! The host-inputs boundary: everything the machine takes from the world outside the guest.
//!
//! This is the one place where record and replay differ. The devices never look at the
//! host themselves: the machine asks a `HostInputs` for the current guest time, the wall
//! clock at boot and serial input bytes, and waits through it when the guest is idle.
//! `RealHost` answers from the real host; the recorder wraps it and logs every answer,
//! the replayer answers from the log.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::run::kick::KickHandle;

/// What the serial input source has for the guest right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialPoll {
    Bytes(Vec<u8>),
    /// Nothing yet; more may come.
    Nothing,
    /// The source is exhausted: no byte will ever come.
    Ended,
}

pub trait HostInputs {
    /// Guest-visible time, nanoseconds since the machine started; never decreases.
    fn now_ns(&mut self) -> u64;
    /// Wall-clock time (unix ns) at which the machine started.
    fn boot_wall_clock_ns(&mut self) -> u64;
    /// Up to `max` serial input bytes that are available now.
    fn poll_serial(&mut self, max: usize) -> SerialPoll;
    /// Blocks while the guest is idle, until guest time `deadline_ns` (None: no deadline)
    /// or until new input may be available, whichever comes first.
    fn wait(&mut self, deadline_ns: Option<u64>);
    /// Lets the inputs kick the vCPU out of KVM_RUN when input arrives.
    fn set_kick(&mut self, kick: KickHandle);
    /// The epoch of `now_ns` as a host instant (deadline timers are armed against it).
    fn epoch(&self) -> Instant;
}

/// Where serial input comes from.
pub enum SerialSource {
    /// No input: the line is hung up from the start.
    None,
    /// Read from a file or stdin until its end, on a reader thread.
    Reader(Box<dyn Read + Send>),
}

#[derive(Default)]
struct InputQueue {
    bytes: VecDeque<u8>,
    ended: bool,
    kick: Option<KickHandle>,
}

/// Shared between the reader thread and the vCPU thread.
#[derive(Default)]
struct SharedInput {
    queue: Mutex<InputQueue>,
    changed: Condvar,
}

/// The real host: monotonic time since start, the real wall clock, a serial reader thread.
pub struct RealHost {
    start: Instant,
    boot_wall_clock_ns: u64,
    input: Arc<SharedInput>,
    /// The end of input has been reported by `poll_serial`.
    ended_seen: bool,
}

impl RealHost {
    pub fn new(serial: SerialSource) -> Self {
        let input = Arc::new(SharedInput::default());
        match serial {
            SerialSource::None => {
                if let Ok(mut q) = input.queue.lock() {
                    q.ended = true;
                }
            }
            SerialSource::Reader(reader) => spawn_reader(reader, input.clone()),
        }
        let boot_wall_clock_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        RealHost {
            start: Instant::now(),
            boot_wall_clock_ns,
            input,
            ended_seen: false,
        }
    }
}

fn spawn_reader(mut reader: Box<dyn Read + Send>, input: Arc<SharedInput>) {
    let spawned = std::thread::Builder::new()
        .name("ttvm-serial-in".into())
        .spawn({
            let input = input.clone();
            move || {
                let mut buf = [0u8; 4096];
                loop {
                    let (data, ended) = match reader.read(&mut buf) {
                        Ok(0) => (&buf[..0], true),
                        Ok(n) => (&buf[..n], false),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!("serial input: read failed, hanging up: {e}");
                            (&buf[..0], true)
                        }
                    };
                    let Ok(mut q) = input.queue.lock() else {
                        return;
                    };
                    q.bytes.extend(data);
                    q.ended = ended;
                    if let Some(kick) = &q.kick {
                        kick.kick();
                    }
                    drop(q);
                    input.changed.notify_all();
                    if ended {
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("serial input: cannot start the reader thread ({e}); no input");
        if let Ok(mut q) = input.queue.lock() {
            q.ended = true;
        }
    }
}

impl RealHost {
    /// Waits until host time `deadline_ns` (since start) or until input arrives or ends;
    /// returns true if input may be available (or the source ended) before the deadline.
    pub fn wait_until(&mut self, deadline_ns: u64) -> bool {
        self.wait(Some(deadline_ns));
        let Ok(q) = self.input.queue.lock() else {
            return false;
        };
        !q.bytes.is_empty() || (q.ended && !self.ended_seen)
    }

    /// Records that the end of input was handed to the guest.
    fn note_poll(&mut self, poll: &SerialPoll) {
        if *poll == SerialPoll::Ended {
            self.ended_seen = true;
        }
    }
}

impl HostInputs for RealHost {
    fn now_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn boot_wall_clock_ns(&mut self) -> u64 {
        self.boot_wall_clock_ns
    }

    fn poll_serial(&mut self, max: usize) -> SerialPoll {
        let poll = match self.input.queue.lock() {
            Err(_) => SerialPoll::Ended,
            Ok(mut q) if !q.bytes.is_empty() && max > 0 => {
                let n = q.bytes.len().min(max);
                SerialPoll::Bytes(q.bytes.drain(..n).collect())
            }
            Ok(q) if q.bytes.is_empty() && q.ended => SerialPoll::Ended,
            Ok(_) => SerialPoll::Nothing,
        };
        self.note_poll(&poll);
        poll
    }

    fn wait(&mut self, deadline_ns: Option<u64>) {
        let now = self.now_ns();
        let Ok(q) = self.input.queue.lock() else {
            return;
        };
        if !q.bytes.is_empty() {
            return;
        }
        let timeout = match deadline_ns {
            Some(d) => Duration::from_nanos(d.saturating_sub(now)),
            None if q.ended => return,
            None => Duration::from_secs(3600),
        };
        if timeout.is_zero() {
            return;
        }
        // Wake for new bytes or for the source ending (the line must then be hung up).
        let ended_before = q.ended;
        let _ = self.input.changed.wait_timeout_while(q, timeout, |q| {
            q.bytes.is_empty() && q.ended == ended_before
        });
    }

    fn set_kick(&mut self, kick: KickHandle) {
        if let Ok(mut q) = self.input.queue.lock() {
            q.kick = Some(kick);
        }
    }

    fn epoch(&self) -> Instant {
        self.start
    }
}
