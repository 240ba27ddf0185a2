//! Opening a trace directory: header, completeness, embedded guest image, checkpoints,
//! and the event stream (see [`crate::stream`] for the reading rules).
use crate::checkpoint::{self, CheckpointError, CheckpointId, CheckpointInfo};
use crate::event::EventRecord;
use crate::header::{GuestImageInfo, HeaderError, TraceHeader};
use crate::stream::{EventStream, StreamError, Tail};
use crate::writer::sha256_hex;
use crate::{COMPLETE_MARKER, EVENTS_FILE, GUEST_IMAGE_FILE, INDEX_FILE, INITRD_FILE};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

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
    /// A file of the trace could not be opened or read.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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
        let header = TraceHeader::read(&dir)?;
        let marked = dir.join(COMPLETE_MARKER).exists();
        let complete = marked && header.close.is_some();
        if marked && !complete {
            tracing::warn!(dir = %dir.display(), "trace has a complete marker but no close record; treating it as incomplete");
        }
        let events_path = dir.join(EVENTS_FILE);
        let file = File::open(&events_path).map_err(|source| ReadError::Io {
            op: "open",
            path: events_path.clone(),
            source,
        })?;
        // The index is a hint: any problem with it just means walking chunk headers.
        let index = std::fs::read(dir.join(INDEX_FILE)).ok();
        let expected = if complete {
            header.close.as_ref().map(|c| c.event_count)
        } else {
            None
        };
        let stream = EventStream::open(
            BufReader::with_capacity(64 * 1024, file),
            events_path,
            index.as_deref(),
            expected,
        )?;
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
        let file = File::open(&path).map_err(|source| ReadError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let damaged = |detail: String| ReadError::GuestImage {
            path: path.clone(),
            detail,
        };
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

    /// Reads checkpoint `id`: its position and bytes.
    pub fn read_checkpoint(&self, id: CheckpointId) -> Result<(u64, Vec<u8>), ReadError> {
        Ok(checkpoint::read_checkpoint(&self.dir, id)?)
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
