//! Reading the `events` file: discovering chunks (through `events.idx` when it is
//! intact, by walking chunk headers otherwise), decoding them one at a time, iterating,
//! peeking and seeking. Generic over any `Read + Seek` source so the fuzz target can
//! feed it bytes from memory.
//!
//! Nothing here trusts the bytes: every length is checked against the file, every
//! header and payload against its CRC, every decoded chunk against its header's event
//! count, byte count and last position. Whatever the input, the result is events that
//! the writer wrote, followed by at most one typed error.
use crate::chunk::{
    self, ChunkHeader, IndexEntry, RecordError, CHUNK_HEADER_LEN, EVENTS_MAGIC, INDEX_ENTRY_LEN,
    INDEX_MAGIC, PREAMBLE_LEN,
};
use crate::codec::{CodecError, Decoder};
use crate::event::{Event, EventRecord};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use thiserror::Error;

/// Errors reading the event stream. Offsets are byte offsets in the named file.
#[derive(Debug, Error)]
pub enum StreamError {
    /// An I/O operation failed.
    #[error("cannot {op} {file} at byte {offset}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        file: PathBuf,
        /// Where.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// A chunk (or the file preamble) is damaged.
    #[error("corrupt chunk in {file} at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Byte offset of the damaged chunk header (or preamble).
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The file's binary layout is newer than this reader.
    #[error("{file}: trace made by a newer ttvm (stream layout {found}); upgrade ttvm to read it")]
    NewerLayout {
        /// The file.
        file: PathBuf,
        /// Layout version found.
        found: u32,
    },
    /// An event kind this version does not know.
    #[error("unknown event kind {kind} in {file} (chunk at byte {offset}, event {event}): trace made by a newer ttvm?")]
    UnknownEventKind {
        /// The file.
        file: PathBuf,
        /// Byte offset of the chunk.
        offset: u64,
        /// Index of the event in the stream.
        event: u64,
        /// The tag found.
        kind: u8,
    },
    /// The trace was not closed and its stream stops here.
    #[error("trace ends early after event {after_event}: recorder did not finish")]
    TraceEndsEarly {
        /// Number of intact events (indices `0..after_event`).
        after_event: u64,
    },
    /// A trace marked complete lost the end of its stream.
    #[error("{file} is cut short at byte {offset} after {after_event} events, yet the trace is marked complete")]
    Truncated {
        /// The file.
        file: PathBuf,
        /// Where the data stops.
        offset: u64,
        /// Number of intact events.
        after_event: u64,
    },
    /// A complete trace's stream holds a different number of events than its header.
    #[error("{file} holds {found} events, but the trace header says {expected}")]
    CountMismatch {
        /// The file.
        file: PathBuf,
        /// Events found.
        found: u64,
        /// Events the header announces.
        expected: u64,
    },
    /// A complete trace's close record (in its header) contradicts the event stream.
    #[error("the close record in {header} does not match the event stream: {detail}; the trace is damaged")]
    CloseMismatch {
        /// The header file.
        header: PathBuf,
        /// What differs.
        detail: String,
    },
    /// `seek_event` beyond the known events.
    #[error("cannot seek to event {requested}: the trace has {available} readable events")]
    SeekPastEnd {
        /// Event asked for.
        requested: u64,
        /// Events known.
        available: u64,
    },
}

/// Buffers are reserved up front only up to this many elements; beyond, they grow with
/// what is actually decoded.
const PREALLOCATE_MAX: usize = 1 << 16;

/// What follows the last intact chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last chunk.
    Clean,
    /// The file ends inside a chunk (or its preamble) at `offset`.
    Truncated {
        /// Start of the incomplete chunk.
        offset: u64,
    },
    /// Bytes at `offset` are not a valid chunk.
    Corrupt {
        /// Where.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
}

/// A reader of one event stream.
pub struct EventStream<R> {
    src: R,
    file: PathBuf,
    file_len: u64,
    chunks: Vec<IndexEntry>,
    tail: Tail,
    expected_total: Option<u64>,
    next_chunk: usize,
    current: Vec<EventRecord>,
    cur_pos: usize,
    next_index: u64,
    pending: Option<StreamError>,
    finished: bool,
    payload: Vec<u8>,
    /// The header file and what its close record gets wrong, reported where the stream
    /// would otherwise end cleanly.
    close_mismatch: Option<(PathBuf, String)>,
}

impl<R> std::fmt::Debug for EventStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("file", &self.file)
            .field("chunks", &self.chunks.len())
            .field("tail", &self.tail)
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

fn read_full<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match src.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl<R: Read + Seek> EventStream<R> {
    /// Opens a stream. `file` names the source in errors; `index` is the content of
    /// `events.idx` if available (used only where it agrees with the stream);
    /// `expected_total` is the event count of a complete trace (`None` while the trace
    /// is incomplete, in which case the stream ends with [`StreamError::TraceEndsEarly`]).
    pub fn open(
        mut src: R,
        file: PathBuf,
        index: Option<&[u8]>,
        expected_total: Option<u64>,
    ) -> Result<Self, StreamError> {
        let io_err = |op, offset, source| StreamError::Io {
            op,
            file: file.clone(),
            offset,
            source,
        };
        let file_len = src
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("measure", 0, e))?;
        src.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("seek", 0, e))?;
        let mut preamble = [0u8; PREAMBLE_LEN];
        let got = read_full(&mut src, &mut preamble).map_err(|e| io_err("read", 0, e))?;
        let mut stream = EventStream {
            src,
            file: file.clone(),
            file_len,
            chunks: Vec::new(),
            tail: Tail::Clean,
            expected_total,
            next_chunk: 0,
            current: Vec::new(),
            cur_pos: 0,
            next_index: 0,
            pending: None,
            finished: false,
            payload: Vec::new(),
            close_mismatch: None,
        };
        if got < PREAMBLE_LEN {
            stream.tail = Tail::Truncated { offset: 0 };
            return Ok(stream);
        }
        match chunk::decode_preamble(EVENTS_MAGIC, &preamble) {
            Ok(_) => {}
            Err(RecordError::NewerVersion { found }) => {
                return Err(StreamError::NewerLayout { file, found })
            }
            Err(e) => {
                return Err(StreamError::Corrupt {
                    file,
                    offset: 0,
                    detail: format!("not a ttvm events file: {e}"),
                })
            }
        }
        let offset = stream.load_index(index.unwrap_or(&[]));
        stream.scan_from(offset)?;
        tracing::debug!(file = %stream.file.display(), chunks = stream.chunks.len(), tail = ?stream.tail, "opened event stream");
        Ok(stream)
    }

    /// Whether `h` continues the chunks found so far (event numbering and positions).
    fn links(&self, h: &ChunkHeader) -> Result<(), String> {
        let (first, base) = self
            .chunks
            .last()
            .map_or((0, 0), |c| (c.header.end_event(), c.header.last_position));
        if h.first_event != first {
            return Err(format!(
                "chunk starts at event {}, expected {first}",
                h.first_event
            ));
        }
        if h.base_position != base {
            return Err(format!(
                "chunk base position {} differs from the previous chunk's last position {base}",
                h.base_position
            ));
        }
        Ok(())
    }

    /// Whether a chunk with header `h` at `offset` fits in the file.
    fn fits(&self, offset: u64, h: &ChunkHeader) -> bool {
        offset.saturating_add(h.disk_len()) <= self.file_len
    }

    fn next_offset(&self) -> u64 {
        self.chunks
            .last()
            .map_or(PREAMBLE_LEN as u64, |c| c.offset + c.header.disk_len())
    }

    /// Takes the leading entries of the index that agree with the stream; returns the
    /// offset where walking the chunk headers must resume.
    fn load_index(&mut self, index: &[u8]) -> u64 {
        let valid_preamble = index
            .get(..PREAMBLE_LEN)
            .and_then(|p| <&[u8; PREAMBLE_LEN]>::try_from(p).ok())
            .is_some_and(|p| chunk::decode_preamble(INDEX_MAGIC, p).is_ok());
        if valid_preamble {
            for raw in index[PREAMBLE_LEN..].chunks_exact(INDEX_ENTRY_LEN) {
                let Ok(raw) = <&[u8; INDEX_ENTRY_LEN]>::try_from(raw) else {
                    break;
                };
                let Ok(entry) = IndexEntry::decode(raw) else {
                    break;
                };
                if entry.offset != self.next_offset()
                    || self.links(&entry.header).is_err()
                    || !self.fits(entry.offset, &entry.header)
                {
                    break;
                }
                self.chunks.push(entry);
            }
        }
        self.next_offset()
    }

    /// Walks chunk headers from `offset` to the end of the file.
    fn scan_from(&mut self, mut offset: u64) -> Result<(), StreamError> {
        loop {
            if offset == self.file_len {
                self.tail = Tail::Clean;
                return Ok(());
            }
            if self.file_len - offset < CHUNK_HEADER_LEN as u64 {
                self.tail = Tail::Truncated { offset };
                return Ok(());
            }
            let mut hb = [0u8; CHUNK_HEADER_LEN];
            self.read_at(offset, &mut hb, "read chunk header of")?;
            let header = match ChunkHeader::decode(&hb) {
                Ok(h) => h,
                Err(e) => {
                    self.tail = Tail::Corrupt {
                        offset,
                        detail: e.to_string(),
                    };
                    return Ok(());
                }
            };
            if let Err(detail) = self.links(&header) {
                self.tail = Tail::Corrupt { offset, detail };
                return Ok(());
            }
            if !self.fits(offset, &header) {
                self.tail = Tail::Truncated { offset };
                return Ok(());
            }
            self.chunks.push(IndexEntry { offset, header });
            offset += header.disk_len();
        }
    }

    fn read_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        op: &'static str,
    ) -> Result<(), StreamError> {
        let io_err = |source| StreamError::Io {
            op,
            file: self.file.clone(),
            offset,
            source,
        };
        self.src.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        let got = read_full(&mut self.src, buf).map_err(io_err)?;
        if got < buf.len() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while reading",
            )));
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, detail: String) -> StreamError {
        StreamError::Corrupt {
            file: self.file.clone(),
            offset,
            detail,
        }
    }

    /// Reads, verifies and decodes chunk `i`.
    fn load_chunk(&mut self, i: usize) -> Result<Vec<EventRecord>, StreamError> {
        let IndexEntry { offset, header } = self.chunks[i];
        let mut hb = [0u8; CHUNK_HEADER_LEN];
        self.read_at(offset, &mut hb, "read chunk header of")?;
        match ChunkHeader::decode(&hb) {
            Ok(h) if h == header => {}
            Ok(_) => return Err(self.corrupt(offset, "chunk header differs from the index".into())),
            Err(e) => return Err(self.corrupt(offset, e.to_string())),
        }
        let mut payload = std::mem::take(&mut self.payload);
        payload.resize(header.compressed_len as usize, 0);
        let read = self.read_at(
            offset + CHUNK_HEADER_LEN as u64,
            &mut payload,
            "read chunk of",
        );
        let result = read.and_then(|()| self.decode_payload(offset, &header, &payload));
        self.payload = payload;
        result
    }

    fn decode_payload(
        &self,
        offset: u64,
        header: &ChunkHeader,
        payload: &[u8],
    ) -> Result<Vec<EventRecord>, StreamError> {
        let crc = crc32fast::hash(payload);
        if crc != header.payload_crc {
            return Err(self.corrupt(
                offset,
                format!(
                    "payload checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                    header.payload_crc
                ),
            ));
        }
        // Streamed, so memory follows what the payload really holds, not what its header
        // claims (a few KiB of zstd can claim 256 MiB).
        let mut raw = Vec::with_capacity((header.raw_len as usize).min(PREALLOCATE_MAX));
        zstd::stream::read::Decoder::with_buffer(payload)
            .and_then(|d| d.take(u64::from(header.raw_len) + 1).read_to_end(&mut raw))
            .map_err(|e| self.corrupt(offset, format!("cannot decompress chunk: {e}")))?;
        if raw.len() != header.raw_len as usize {
            return Err(self.corrupt(
                offset,
                format!(
                    "chunk holds {} raw bytes, header says {}",
                    raw.len(),
                    header.raw_len
                ),
            ));
        }
        let mut dec = Decoder::new(&raw);
        let mut events = Vec::with_capacity((header.event_count as usize).min(PREALLOCATE_MAX));
        let mut position = header.base_position;
        for n in 0..u64::from(header.event_count) {
            let index = header.first_event + n;
            let rec = dec.event(position).map_err(|e| match e {
                CodecError::UnknownKind { kind, .. } => StreamError::UnknownEventKind {
                    file: self.file.clone(),
                    offset,
                    event: index,
                    kind,
                },
                e => self.corrupt(offset, format!("event {index}: {e}")),
            })?;
            position = rec.position;
            events.push(rec);
        }
        if !dec.is_empty() {
            return Err(self.corrupt(
                offset,
                format!(
                    "{} stray bytes after the chunk's last event",
                    raw.len() - dec.offset()
                ),
            ));
        }
        if position != header.last_position {
            return Err(self.corrupt(
                offset,
                format!(
                    "last event at position {position}, header says {}",
                    header.last_position
                ),
            ));
        }
        Ok(events)
    }

    /// The error (if any) that ends the stream after the last intact chunk.
    fn end_error(&self) -> Option<StreamError> {
        let found = self.known_events();
        let file = self.file.clone();
        match (&self.tail, self.expected_total) {
            (Tail::Corrupt { offset, detail }, _) => Some(StreamError::Corrupt {
                file,
                offset: *offset,
                detail: detail.clone(),
            }),
            (_, None) => Some(StreamError::TraceEndsEarly { after_event: found }),
            (Tail::Truncated { offset }, Some(_)) => Some(StreamError::Truncated {
                file,
                offset: *offset,
                after_event: found,
            }),
            (Tail::Clean, Some(expected)) if expected != found => {
                Some(StreamError::CountMismatch {
                    file,
                    found,
                    expected,
                })
            }
            (Tail::Clean, Some(_)) => {
                self.close_mismatch
                    .as_ref()
                    .map(|(header, detail)| StreamError::CloseMismatch {
                        header: header.clone(),
                        detail: detail.clone(),
                    })
            }
        }
    }

    /// Makes the stream end with [`StreamError::CloseMismatch`] instead of cleanly: the
    /// close record in `header` disagrees with the stream (`detail` says how).
    pub fn set_close_mismatch(&mut self, header: PathBuf, detail: String) {
        self.close_mismatch = Some((header, detail));
    }

    /// The header file and the disagreement set by [`Self::set_close_mismatch`].
    pub fn close_mismatch(&self) -> Option<(&std::path::Path, &str)> {
        self.close_mismatch
            .as_ref()
            .map(|(header, detail)| (header.as_path(), detail.as_str()))
    }

    /// The last event of the chunks found (reading only the last chunk), without
    /// moving the iteration; `None` if there are no chunks.
    pub fn last_event(&mut self) -> Result<Option<EventRecord>, StreamError> {
        let Some(last) = self.chunks.len().checked_sub(1) else {
            return Ok(None);
        };
        Ok(self.load_chunk(last)?.pop())
    }

    /// Makes the next event (or the pending error) available.
    fn fill(&mut self) {
        while !self.finished && self.pending.is_none() && self.cur_pos >= self.current.len() {
            if self.next_chunk < self.chunks.len() {
                match self.load_chunk(self.next_chunk) {
                    Ok(events) => {
                        self.current = events;
                        self.cur_pos = 0;
                        self.next_chunk += 1;
                    }
                    Err(e) => self.pending = Some(e),
                }
            } else {
                self.pending = self.end_error();
                if self.pending.is_none() {
                    self.finished = true;
                }
            }
        }
    }

    /// The next event, or the error that ends the stream (yielded once), or `None`.
    pub fn next_event(&mut self) -> Option<Result<EventRecord, StreamError>> {
        self.fill();
        if let Some(e) = self.pending.take() {
            self.finished = true;
            return Some(Err(e));
        }
        let slot = self.current.get_mut(self.cur_pos)?;
        let placeholder = EventRecord {
            position: 0,
            event: Event::SerialHangup,
        };
        let rec = std::mem::replace(slot, placeholder);
        self.cur_pos += 1;
        self.next_index += 1;
        Some(Ok(rec))
    }

    /// The event [`next_event`](Self::next_event) would return, without consuming it.
    pub fn peek(&mut self) -> Option<Result<&EventRecord, &StreamError>> {
        self.fill();
        if let Some(e) = &self.pending {
            return Some(Err(e));
        }
        self.current.get(self.cur_pos).map(Ok)
    }

    /// Positions the stream so the next event is event `n` (0-based). `n` may equal the
    /// number of known events (the end).
    pub fn seek_event(&mut self, n: u64) -> Result<(), StreamError> {
        let available = self.known_events();
        if n > available {
            return Err(StreamError::SeekPastEnd {
                requested: n,
                available,
            });
        }
        self.pending = None;
        self.finished = false;
        self.current.clear();
        self.cur_pos = 0;
        let i = self.chunks.partition_point(|c| c.header.end_event() <= n);
        self.next_chunk = i;
        self.next_index = n;
        if i < self.chunks.len() {
            self.current = self.load_chunk(i)?;
            self.next_chunk = i + 1;
            self.cur_pos = (n - self.chunks[i].header.first_event) as usize;
        }
        Ok(())
    }

    /// Index of the event the next call to `next_event` returns.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Number of events in the chunks found (all readable unless a chunk is damaged).
    pub fn known_events(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.header.end_event())
    }

    /// The chunks found, in order.
    pub fn chunks(&self) -> &[IndexEntry] {
        &self.chunks
    }

    /// What follows the last chunk.
    pub fn tail(&self) -> &Tail {
        &self.tail
    }

    /// Size of the events file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
}

impl<R: Read + Seek> Iterator for EventStream<R> {
    type Item = Result<EventRecord, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event()
    }
}
