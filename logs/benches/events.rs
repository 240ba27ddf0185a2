//! Trace writer/reader throughput and density on a timer-heavy synthetic stream.
//!
//! Run: `cargo bench -p ttvm-logs --bench events` (plain `main`, no harness). Prints
//! events/s written on one core, bytes/event of the `events` file, and events/s read.
//! The stream: an interrupt every ~1000 positions (± 64 jitter), a `HostTime` after
//! every 8th interrupt, a `StateDigest` after every 64th.
use std::time::{Duration, Instant};
use ttvm_logs::*;

const EVENTS: usize = 4_000_000;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// `%` rather than `is_multiple_of`: the workspace's rust-version is 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn timer_heavy_stream(n: usize) -> Vec<EventRecord> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(n);
    let mut position = 0u64;
    let mut interrupts = 0u64;
    while out.len() < n {
        position += 1000 - 64 + rng.next() % 129;
        interrupts += 1;
        out.push(EventRecord {
            position,
            event: Event::Interrupt { vector: 0x20 },
        });
        if interrupts % 8 == 0 {
            // ~1 ns per position plus host noise.
            let nanos = position + rng.next() % 5000;
            out.push(EventRecord {
                position,
                event: Event::HostTime { nanos },
            });
        }
        if interrupts % 64 == 0 {
            out.push(EventRecord {
                position,
                event: Event::StateDigest { digest: rng.next() },
            });
        }
    }
    out.truncate(n);
    out
}

fn meta() -> TraceMeta {
    TraceMeta {
        guest_name: "bench".into(),
        ttvm_version: env!("CARGO_PKG_VERSION").into(),
        clock: ClockInfo {
            semantics: "synthetic".into(),
            params: Default::default(),
        },
        ..TraceMeta::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = timer_heavy_stream(EVENTS);
    let last = events.last().map_or(0, |e| e.position);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("trace");

    let start = Instant::now();
    let mut w = TraceWriter::create(&TraceLocation::Exact(dir.clone()), &meta(), b"image")?;
    for e in &events {
        w.push(e.clone())?;
    }
    let summary = w.finish(CloseInfo {
        end_reason: EndReason::Interrupted,
        final_position: last,
        duration: Duration::ZERO,
        counters: Default::default(),
    })?;
    let write_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut r = TraceReader::open(&dir)?;
    let mut read = 0u64;
    for e in r.events() {
        e?;
        read += 1;
    }
    let read_secs = start.elapsed().as_secs_f64();

    let n = summary.event_count as f64;
    println!(
        "timer-heavy stream: {} events, {} chunks",
        summary.event_count, summary.chunk_count
    );
    println!(
        "write: {:.2} M events/s (one thread, incl. zstd and finish)",
        n / write_secs / 1e6
    );
    println!(
        "size:  {:.3} bytes/event on disk (events file {} bytes; raw {:.3} bytes/event before zstd)",
        summary.events_file_bytes as f64 / n,
        summary.events_file_bytes,
        summary.raw_bytes as f64 / n
    );
    println!(
        "read:  {:.2} M events/s (open + decode + iterate)",
        read as f64 / read_secs / 1e6
    );
    Ok(())
}
