//! `ttvm-logs`: ttvm's trace format. No KVM dependency.
//!
//! A trace is a directory (rr-style) that replays with nothing else at hand:
//!
//! | file | contents |
//! | --- | --- |
//! | `header.json` | [`TraceHeader`]: versions, creation time, machine, clock, host, image digest; the close record once finished |
//! | `guest.zst` | the guest image, zstd |
//! | `events` | the event stream: a preamble, then chunks (header + zstd payload) |
//! | `events.idx` | one entry per chunk, to jump to event N without decompressing |
//! | `checkpoints/` | `<id>-<position>.ckpt` snapshot files |
//! | `output.idx` | a cache: the serial output with each byte's position (built on first use by the replayer) |
//! | `incomplete` / `complete` | marker: `incomplete` while recording, replaced by `complete` at clean close |
//!
//! The byte-level layout, the encoding choice, crash-safety guarantees and versioning
//! rules are in `FORMAT.md` next to this crate's `Cargo.toml`.
//!
//! # Recording
//! ```no_run
//! use ttvm_logs::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let meta = TraceMeta { guest_name: "hello".into(), ..TraceMeta::default() };
//! let mut w = TraceWriter::create(&TraceLocation::default_root()?, &meta, b"image")?;
//! w.push(EventRecord { position: 1000, event: Event::Interrupt { vector: 0x20 } })?;
//! w.tick()?; // periodically, even without events
//! let close = CloseInfo {
//!     end_reason: EndReason::GuestExit { status: 0 },
//!     final_position: 5000,
//!     duration: std::time::Duration::from_secs(1),
//!     counters: Default::default(),
//! };
//! let summary = w.finish(close)?;
//! # Ok(()) }
//! ```
//!
//! # Replaying
//! ```no_run
//! use ttvm_logs::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = default_trace_root()?;
//! let mut r = TraceReader::open(resolve_trace(&root, None)?)?;
//! let image = r.guest_image()?;
//! r.seek_event(10)?;
//! for rec in r.events() {
//!     let rec = rec?; // the last item may be "trace ends early after event N"
//!     println!("{} {}", rec.position, rec.event);
//! }
//! # Ok(()) }
//! ```
pub mod archive;
pub mod checkpoint;
pub mod chunk;
pub mod clock;
pub mod close;
pub mod codec;
pub mod event;
pub mod files;
mod fsutil;
pub mod header;
pub mod location;
pub mod output_index;
pub mod reader;
pub mod report;
pub mod stream;
pub mod writer;

pub use checkpoint::{CheckpointError, CheckpointId, CheckpointInfo};
pub use clock::{
    ChaosParams, ClockInfo, ClockParams, PmuCounter, PmuParams, SinglestepParams, PMU_CLOCK,
    SINGLESTEP_CLOCK,
};
pub use event::{EndReason, Event, EventKind, EventRecord};
pub use files::FileError;
pub use header::{
    CloseRecord, CpuidEntry, GuestImageInfo, HeaderError, HostInfo, MachineConfig, Timestamp,
    TraceHeader, TraceMeta, COMPAT_VERSION, FORMAT_VERSION,
};
pub use location::{
    default_trace_root, resolve_trace, LocationError, TraceLocation, LATEST_LINK, TRACE_DIR_ENV,
};
pub use reader::{Events, ReadError, TraceReader, MAX_GUEST_IMAGE_BYTES};
pub use stream::{EventStream, StreamError, Tail};
pub use writer::{CloseInfo, TraceSummary, TraceWriter, WriteError, WriterOptions};

/// The event stream file of a trace.
pub const EVENTS_FILE: &str = "events";
/// The chunk index file of a trace.
pub const INDEX_FILE: &str = "events.idx";
/// The embedded, zstd-compressed guest image.
pub const GUEST_IMAGE_FILE: &str = "guest.zst";
/// The embedded, zstd-compressed initrd (only in traces of guests booted with one).
pub const INITRD_FILE: &str = "initrd.zst";
/// Marker present while a trace is being recorded (or after its recorder died).
pub const INCOMPLETE_MARKER: &str = "incomplete";
/// Marker present once a trace was closed cleanly.
pub const COMPLETE_MARKER: &str = "complete";
