//! Opening a trace directory: header, completeness, embedded guest image, checkpoints,
//! and the event stream (see [`crate::stream`] for the reading rules).
use crate::checkpoint::{self, CheckpointError, CheckpointId, CheckpointInfo};
use crate::chunk::{CHUNK_HEADER_LEN, INDEX_ENTRY_LEN, PREAMBLE_LEN};
use crate::close::close_mismatch;
use crate::event::EventRecord;
use crate::files::{self, FileError};
use crate::header::{GuestImageInfo, HeaderError, TraceHeader, HEADER_FILE};
use crate::stream::{EventStream, StreamError, Tail};
use crate::writer::sha256_hex;
use crate::{COMPLETE_MARKER, EVENTS_FILE, GUEST_IMAGE_FILE, INDEX_FILE, INITRD_FILE};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest guest image a trace may embed (uncompressed), and the largest `ttvm run` and
/// `ttvm record` read: far above any kernel's loaded size, even with debug information.
pub const MAX_GUEST_IMAGE_BYTES: u64 = 4 << 30;

/// Errors opening or reading a trace.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The header is missing, damaged, or needs a newer ttvm.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The event stream is damaged or ends early.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file of the trace is missing, not a regular file, too large or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The embedded guest image is damaged.
    #[error("embedded guest image {path} is damaged: {detail}")]
    GuestImage {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl ReadError {
    /// `Some(n)` if this is the "trace ends early after event n" error.
    pub fn ends_early(&self) -> Option<u64> {
        match self {
            ReadError::Stream(StreamError::TraceEndsEarly { after_event }) => Some(*after_event),
            _ => None,
        }
    }
}

/// An open trace. Iterating yields every event of every intact chunk, then at most one
/// error (e.g. [`StreamError::TraceEndsEarly`] for a trace whose recorder did not
/// finish).
#[derive(Debug)]
pub struct TraceReader {
    dir: PathBuf,
    header: TraceHeader,
    complete: bool,
    stream: EventStream<BufReader<File>>,
}

impl TraceReader {
    /// Opens the trace directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ReadError> {
        let dir = dir.as_ref().to_path_buf();
        files::require_dir(&dir)?;
        let header = TraceHeader::read(&dir)?;
        let marked = dir.join(COMPLETE_MARKER).exists();
        let complete = marked && header.close.is_some();
        if marked && !complete {
            tracing::warn!(dir = %dir.display(), "trace has a complete marker but no close record; treating it as incomplete");
        }
        let events_path = dir.join(EVENTS_FILE);
        let (file, events_len) = files::open_regular(&events_path)?;
        let index = read_index(&dir.join(INDEX_FILE), events_len)?;
        let close = header.close.as_ref().filter(|_| complete);
        let mut stream = EventStream::open(
            BufReader::with_capacity(64 * 1024, file),
            events_path,
            index.as_deref(),
            close.map(|c| c.event_count),
        )?;
        if let Some(close) = close {
            if let Some(detail) = close_mismatch(close, &mut stream) {
                tracing::debug!(dir = %dir.display(), %detail, "close record contradicts the stream");
                stream.set_close_mismatch(dir.join(HEADER_FILE), detail);
            }
        }
        Ok(TraceReader {
            dir,
            header,
            complete,
            stream,
        })
    }

    /// The trace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Whether the recorder closed the trace cleanly.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Events in the chunks found so far (for a complete, undamaged trace: all).
    pub fn event_count(&self) -> u64 {
        self.stream.known_events()
    }

    /// The underlying stream (chunk list, tail state, file size).
    pub fn stream(&self) -> &EventStream<BufReader<File>> {
        &self.stream
    }

    /// Whether the events file ends with damaged or partial data after its last
    /// intact chunk.
    pub fn tail(&self) -> &Tail {
        self.stream.tail()
    }

    /// The next event, or the error that ends the stream (once), or `None` at the end.
    pub fn next_event(&mut self) -> Option<Result<EventRecord, ReadError>> {
        self.stream.next_event().map(|r| r.map_err(ReadError::from))
    }

    /// The next event without consuming it.
    pub fn peek(&mut self) -> Option<Result<&EventRecord, &StreamError>> {
        self.stream.peek()
    }

    /// Makes event `n` (0-based) the next one.
    pub fn seek_event(&mut self, n: u64) -> Result<(), ReadError> {
        Ok(self.stream.seek_event(n)?)
    }

    /// Index of the next event.
    pub fn next_index(&self) -> u64 {
        self.stream.next_index()
    }

    /// Iterates from the current event to the end (see [`TraceReader::next_event`]).
    pub fn events(&mut self) -> Events<'_> {
        Events { reader: self }
    }

    /// Whether the close record contradicts the event stream: the error the stream
    /// ends with, if so (reading the events reaches it too, after the last event).
    pub fn check_close(&self) -> Result<(), ReadError> {
        match self.stream.close_mismatch() {
            Some((header, detail)) => Err(StreamError::CloseMismatch {
                header: header.to_path_buf(),
                detail: detail.to_string(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The embedded guest image, decompressed and checked against the header's
    /// size and SHA-256.
    pub fn guest_image(&self) -> Result<Vec<u8>, ReadError> {
        self.embedded(GUEST_IMAGE_FILE, &self.header.guest_image)
    }

    /// The embedded initrd, if the guest was booted with one, checked like the image.
    pub fn initrd(&self) -> Result<Option<Vec<u8>>, ReadError> {
        match &self.header.initrd {
            Some(info) => Ok(Some(self.embedded(INITRD_FILE, info)?)),
            None => Ok(None),
        }
    }

    /// An embedded file (`name` in the trace), decompressed and checked against `info`.
    fn embedded(&self, name: &str, info: &GuestImageInfo) -> Result<Vec<u8>, ReadError> {
        let path = self.dir.join(name);
        let (file, _) = files::open_regular(&path)?;
        let damaged = |detail: String| ReadError::GuestImage {
            path: path.clone(),
            detail,
        };
        if info.size > MAX_GUEST_IMAGE_BYTES {
            return Err(damaged(format!(
                "the header says it is {} bytes, more than a guest image can be ({MAX_GUEST_IMAGE_BYTES} bytes at most)",
                info.size
            )));
        }
        let mut image = Vec::new();
        zstd::stream::read::Decoder::new(file)
            .and_then(|d| d.take(info.size.saturating_add(1)).read_to_end(&mut image))
            .map_err(|e| damaged(format!("cannot decompress: {e}")))?;
        if image.len() as u64 != info.size {
            return Err(damaged(format!(
                "{} bytes, header says {}",
                image.len(),
                info.size
            )));
        }
        let digest = sha256_hex(&image);
        if digest != info.sha256 {
            return Err(damaged(format!(
                "sha256 {digest}, header says {}",
                info.sha256
            )));
        }
        Ok(image)
    }

    /// The checkpoints of the trace, in id order.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>, ReadError> {
        Ok(checkpoint::list_checkpoints(&self.dir)?)
    }

    /// Reads checkpoint `id`: its position and bytes (at most what a snapshot of this
    /// trace's machine can hold).
    pub fn read_checkpoint(&self, id: CheckpointId) -> Result<(u64, Vec<u8>), ReadError> {
        let max_raw = checkpoint::max_raw_len(self.header.machine.mem_bytes);
        Ok(checkpoint::read_checkpoint(&self.dir, id, max_raw)?)
    }
}

/// The contents of `events.idx`, if usable. The index is a hint: a missing or unreadable
/// one means walking chunk headers. It holds at most one entry per chunk, and every chunk
/// takes at least a chunk header in `events`, so only that much of it is read.
fn read_index(path: &Path, events_len: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let chunks = events_len.saturating_sub(PREAMBLE_LEN as u64) / CHUNK_HEADER_LEN as u64;
    let limit = (PREAMBLE_LEN as u64).saturating_add(chunks.saturating_mul(INDEX_ENTRY_LEN as u64));
    match files::read_prefix(path, limit) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(FileError::Missing { .. }) => Ok(None),
        // Not something a crash leaves behind: say so rather than silently walking.
        Err(e @ FileError::NotRegular { .. }) => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring the chunk index");
            Ok(None)
        }
    }
}

/// Iterator over the events of a [`TraceReader`].
#[derive(Debug)]
pub struct Events<'a> {
    reader: &'a mut TraceReader,
}

impl Iterator for Events<'_> {
    type Item = Result<EventRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_event()
    }
}
