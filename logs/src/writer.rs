//! The trace writer, used by the recorder on its hot path (one thread).
//!
//! [`TraceWriter::push`] encodes an event into the current chunk (a `Vec` append, a few
//! varints). A chunk is compressed and written with one `write(2)` when it reaches
//! [`WriterOptions::chunk_bytes`] raw bytes or when [`WriterOptions::flush_interval`]
//! has passed since the last flush (the clock is read every [`TIME_CHECK_EVERY`] pushes
//! and on every [`TraceWriter::tick`]). Once written, data survives the death of the
//! recorder process; `fsync` happens only at [`TraceWriter::finish`].
use crate::checkpoint::{self, CheckpointError, CheckpointId, CheckpointInfo};
use crate::chunk::{self, ChunkHeader, IndexEntry, EVENTS_MAGIC, INDEX_MAGIC, MAX_CHUNK_RAW_LEN};
use crate::codec;
use crate::event::{EndReason, Event, EventKind, EventRecord};
use crate::fsutil;
use crate::header::{
    counts_by_name, CloseRecord, GuestImageInfo, HeaderError, Timestamp, TraceHeader, TraceMeta,
};
use crate::location::{LocationError, TraceLocation};
use crate::{
    COMPLETE_MARKER, EVENTS_FILE, GUEST_IMAGE_FILE, INCOMPLETE_MARKER, INDEX_FILE, INITRD_FILE,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Default raw size at which a chunk is flushed.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;
/// Default longest time between flushes while events arrive or `tick` is called.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// The clock is read once every this many pushes.
pub const TIME_CHECK_EVERY: u32 = 64;
/// zstd level of event chunks (fast; see the benchmark).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
const IMAGE_ZSTD_LEVEL: i32 = 9;

/// Errors creating, writing or closing a trace.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The trace directory could not be set up.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// The header could not be written.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An I/O operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Events must come with non-decreasing positions.
    #[error("event position {position} is before the previous event's {last}")]
    PositionWentBackwards {
        /// Previous position.
        last: u64,
        /// Offending position.
        position: u64,
    },
    /// One event does not fit in a chunk.
    #[error("event of {size} encoded bytes exceeds the chunk limit of {limit}")]
    EventTooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: u32,
    },
    /// `finish` with an end other than the `End` event already pushed.
    #[error("the close record (end \"{close_reason}\" at position {final_position}) contradicts the End event pushed last (\"{pushed_reason}\" at position {pushed_position})")]
    CloseContradictsEnd {
        /// The end given to `finish`.
        close_reason: EndReason,
        /// The final position given to `finish`.
        final_position: u64,
        /// The reason of the `End` event pushed.
        pushed_reason: EndReason,
        /// Its position.
        pushed_position: u64,
    },
    /// `finish` with a final position before the last event.
    #[error("final position {final_position} is before the last event's {last}")]
    FinalPositionBeforeLast {
        /// Given final position.
        final_position: u64,
        /// Last event position.
        last: u64,
    },
}

/// Tuning of a writer; [`Default`] is what the recorder should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Flush when the current chunk's raw events reach this many bytes.
    pub chunk_bytes: usize,
    /// Flush when this much time passed since the last flush (`None`: only on size,
    /// [`TraceWriter::flush`] and finish).
    pub flush_interval: Option<Duration>,
    /// zstd level for chunks.
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            flush_interval: Some(DEFAULT_FLUSH_INTERVAL),
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// How the recording ended, given to [`TraceWriter::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Why the run ended.
    pub end_reason: EndReason,
    /// Position-clock value at the end (>= the last event's position).
    pub final_position: u64,
    /// Wall-clock duration of the recording.
    pub duration: Duration,
    /// Recorder counters (VM exits, steps...), stored in the header.
    pub counters: BTreeMap<String, u64>,
}

/// What a finished trace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// The trace directory.
    pub dir: PathBuf,
    /// The final header (with its close record).
    pub header: TraceHeader,
    /// Events written (including the final `End`).
    pub event_count: u64,
    /// Chunks written.
    pub chunk_count: u64,
    /// Raw (uncompressed) event bytes.
    pub raw_bytes: u64,
    /// Size of the `events` file.
    pub events_file_bytes: u64,
}

/// Writes one trace directory. See the module docs for the flushing rules.
pub struct TraceWriter {
    dir: PathBuf,
    header: TraceHeader,
    options: WriterOptions,
    events: File,
    index: File,
    events_offset: u64,
    buf: Vec<u8>,
    frame: Vec<u8>,
    compressed: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
    chunk_first_event: u64,
    chunk_events: u32,
    chunk_base_position: u64,
    last_position: u64,
    /// The reason of the last event pushed, if it is an `End`.
    last_end: Option<EndReason>,
    total_events: u64,
    chunk_count: u64,
    raw_bytes: u64,
    counts: [u64; EventKind::COUNT],
    pushes_since_time_check: u32,
    last_flush: Instant,
    next_checkpoint: u32,
    finished: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("dir", &self.dir)
            .field("events", &self.total_events)
            .field("chunks", &self.chunk_count)
            .finish_non_exhaustive()
    }
}

fn create_file(path: &Path, contents: &[u8]) -> Result<File, WriteError> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(contents).map_err(io_err("write", path))?;
    Ok(f)
}

impl TraceWriter {
    /// Creates a trace at `location` with default options.
    pub fn create(
        location: &TraceLocation,
        meta: &TraceMeta,
        guest_image: &[u8],
    ) -> Result<Self, WriteError> {
        Self::create_with(location, meta, guest_image, WriterOptions::default())
    }

    /// Embeds the guest's initrd (`initrd.zst`) and names it in the header.
    pub fn embed_initrd(&mut self, name: &str, initrd: &[u8]) -> Result<(), WriteError> {
        let path = self.dir.join(INITRD_FILE);
        let compressed = zstd::bulk::compress(initrd, IMAGE_ZSTD_LEVEL)
            .map_err(io_err("compress the initrd into", &path))?;
        fsutil::write_atomic(&path, &compressed).map_err(io_err("write", &path))?;
        self.header.initrd = Some(GuestImageInfo {
            name: name.to_string(),
            size: initrd.len() as u64,
            sha256: sha256_hex(initrd),
        });
        self.header.write(&self.dir)?;
        Ok(())
    }

    /// Creates a trace: the directory, the `incomplete` marker, the embedded image,
    /// the header and the (empty) event stream and index.
    pub fn create_with(
        location: &TraceLocation,
        meta: &TraceMeta,
        guest_image: &[u8],
        options: WriterOptions,
    ) -> Result<Self, WriteError> {
        let dir = location.create_dir(&meta.guest_name)?;
        let marker = dir.join(INCOMPLETE_MARKER);
        fsutil::write_atomic(&marker, b"recording in progress or interrupted\n")
            .map_err(io_err("create", &marker))?;

        let image_path = dir.join(GUEST_IMAGE_FILE);
        let compressed = zstd::bulk::compress(guest_image, IMAGE_ZSTD_LEVEL)
            .map_err(io_err("compress the guest image into", &image_path))?;
        fsutil::write_atomic(&image_path, &compressed).map_err(io_err("write", &image_path))?;
        let image = GuestImageInfo {
            name: meta.guest_image_name.clone(),
            size: guest_image.len() as u64,
            sha256: sha256_hex(guest_image),
        };
        let header = TraceHeader::new(meta, image);
        header.write(&dir)?;

        let events = create_file(
            &dir.join(EVENTS_FILE),
            &chunk::encode_preamble(EVENTS_MAGIC),
        )?;
        let index = create_file(&dir.join(INDEX_FILE), &chunk::encode_preamble(INDEX_MAGIC))?;
        let events_path = dir.join(EVENTS_FILE);
        let compressor = zstd::bulk::Compressor::new(options.zstd_level)
            .map_err(io_err("set up compression for", &events_path))?;
        tracing::info!(dir = %dir.display(), "recording trace");
        Ok(TraceWriter {
            dir,
            header,
            buf: Vec::with_capacity(options.chunk_bytes + 64),
            options,
            events,
            index,
            events_offset: chunk::PREAMBLE_LEN as u64,
            frame: Vec::new(),
            compressed: Vec::new(),
            compressor,
            chunk_first_event: 0,
            chunk_events: 0,
            chunk_base_position: 0,
            last_position: 0,
            last_end: None,
            total_events: 0,
            chunk_count: 0,
            raw_bytes: 0,
            counts: [0; EventKind::COUNT],
            pushes_since_time_check: 0,
            last_flush: Instant::now(),
            next_checkpoint: 0,
            finished: false,
        })
    }

    /// The trace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The header as written at creation.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The position of the last event pushed (0 before any).
    pub fn last_position(&self) -> u64 {
        self.last_position
    }

    /// Events pushed so far.
    pub fn event_count(&self) -> u64 {
        self.total_events
    }

    /// Chunks written so far.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// Appends an event. Positions must not decrease.
    #[inline]
    pub fn push(&mut self, record: EventRecord) -> Result<(), WriteError> {
        if record.position < self.last_position {
            return Err(WriteError::PositionWentBackwards {
                last: self.last_position,
                position: record.position,
            });
        }
        let before = self.buf.len();
        codec::encode_event(&mut self.buf, self.last_position, &record);
        if self.buf.len() > MAX_CHUNK_RAW_LEN as usize {
            let size = self.buf.len() - before;
            self.buf.truncate(before);
            if before > 0 {
                // Not too large on its own: flush what is there and retry.
                self.flush()?;
                return self.push(record);
            }
            return Err(WriteError::EventTooLarge {
                size,
                limit: MAX_CHUNK_RAW_LEN,
            });
        }
        self.last_position = record.position;
        let kind = record.event.kind();
        self.last_end = match &record.event {
            Event::End { reason } => Some(reason.clone()),
            _ => None,
        };
        self.counts[kind.index()] += 1;
        self.chunk_events += 1;
        self.total_events += 1;
        if self.buf.len() >= self.options.chunk_bytes || self.chunk_events == u32::MAX {
            return self.flush();
        }
        self.pushes_since_time_check += 1;
        if self.pushes_since_time_check >= TIME_CHECK_EVERY {
            self.pushes_since_time_check = 0;
            return self.tick();
        }
        Ok(())
    }

    /// Flushes if the flush interval has passed; call it periodically even when no
    /// events arrive.
    pub fn tick(&mut self) -> Result<(), WriteError> {
        match self.options.flush_interval {
            Some(interval) if self.last_flush.elapsed() >= interval => self.flush(),
            _ => Ok(()),
        }
    }

    /// Compresses and writes the current chunk (if any) and its index entry.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.last_flush = Instant::now();
        if self.chunk_events == 0 {
            return Ok(());
        }
        let events_path = self.dir.join(EVENTS_FILE);
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(self.buf.len()));
        self.compressor
            .compress_to_buffer(&self.buf, &mut self.compressed)
            .map_err(io_err("compress a chunk for", &events_path))?;
        let header = ChunkHeader {
            compressed_len: self.compressed.len() as u32,
            raw_len: self.buf.len() as u32,
            event_count: self.chunk_events,
            first_event: self.chunk_first_event,
            base_position: self.chunk_base_position,
            last_position: self.last_position,
            payload_crc: crc32fast::hash(&self.compressed),
        };
        self.frame.clear();
        self.frame.extend_from_slice(&header.encode());
        self.frame.extend_from_slice(&self.compressed);
        self.events
            .write_all(&self.frame)
            .map_err(io_err("write a chunk to", &events_path))?;
        let entry = IndexEntry {
            offset: self.events_offset,
            header,
        };
        let index_path = self.dir.join(INDEX_FILE);
        self.index
            .write_all(&entry.encode())
            .map_err(io_err("write an index entry to", &index_path))?;
        self.events_offset += header.disk_len();
        self.raw_bytes += self.buf.len() as u64;
        self.chunk_count += 1;
        self.chunk_first_event = self.total_events;
        self.chunk_base_position = self.last_position;
        self.chunk_events = 0;
        self.buf.clear();
        Ok(())
    }

    /// Stores a checkpoint taken at `position` (written atomically, independent of the
    /// event stream).
    pub fn add_checkpoint(
        &mut self,
        position: u64,
        bytes: &[u8],
    ) -> Result<CheckpointId, WriteError> {
        let id = CheckpointId(self.next_checkpoint);
        checkpoint::write_checkpoint(&self.dir, id, position, bytes)?;
        self.next_checkpoint += 1;
        Ok(id)
    }

    /// Checkpoints stored so far.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>, WriteError> {
        Ok(checkpoint::list_checkpoints(&self.dir)?)
    }

    /// Closes the trace: appends `End { reason }` at the final position unless the last
    /// event already is that `End` (another `End` is an error: readers check that the
    /// close record and the stream's end agree), flushes, fsyncs, rewrites the header
    /// with the close record, and replaces the `incomplete` marker by `complete`.
    pub fn finish(mut self, close: CloseInfo) -> Result<TraceSummary, WriteError> {
        if close.final_position < self.last_position {
            return Err(WriteError::FinalPositionBeforeLast {
                final_position: close.final_position,
                last: self.last_position,
            });
        }
        match self.last_end.take() {
            None => self.push(EventRecord {
                position: close.final_position,
                event: Event::End {
                    reason: close.end_reason.clone(),
                },
            })?,
            Some(pushed) => {
                if pushed != close.end_reason || self.last_position != close.final_position {
                    return Err(WriteError::CloseContradictsEnd {
                        close_reason: close.end_reason,
                        final_position: close.final_position,
                        pushed_reason: pushed,
                        pushed_position: self.last_position,
                    });
                }
            }
        }
        self.flush()?;
        let events_path = self.dir.join(EVENTS_FILE);
        self.events
            .sync_all()
            .map_err(io_err("sync", &events_path))?;
        let index_path = self.dir.join(INDEX_FILE);
        self.index.sync_all().map_err(io_err("sync", &index_path))?;
        self.header.close = Some(CloseRecord {
            end_reason: close.end_reason,
            final_position: close.final_position,
            duration_nanos: u64::try_from(close.duration.as_nanos()).unwrap_or(u64::MAX),
            closed: Timestamp::now(),
            event_count: self.total_events,
            chunk_count: self.chunk_count,
            checkpoint_count: u64::from(self.next_checkpoint),
            events_by_kind: counts_by_name(&self.counts),
            counters: close.counters,
        });
        self.header.write(&self.dir)?;
        let complete = self.dir.join(COMPLETE_MARKER);
        fsutil::write_atomic(&complete, b"recording finished cleanly\n")
            .map_err(io_err("create", &complete))?;
        let incomplete = self.dir.join(INCOMPLETE_MARKER);
        std::fs::remove_file(&incomplete).map_err(io_err("remove", &incomplete))?;
        fsutil::sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        self.finished = true;
        tracing::info!(dir = %self.dir.display(), events = self.total_events, chunks = self.chunk_count, "trace closed");
        Ok(TraceSummary {
            dir: self.dir.clone(),
            header: self.header.clone(),
            event_count: self.total_events,
            chunk_count: self.chunk_count,
            raw_bytes: self.raw_bytes,
            events_file_bytes: self.events_offset,
        })
    }
}

impl Drop for TraceWriter {
    /// A writer dropped without `finish` (error path, unwinding) still writes the
    /// events it buffered; the trace stays marked incomplete.
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.flush() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not flush an abandoned trace");
            }
        }
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
