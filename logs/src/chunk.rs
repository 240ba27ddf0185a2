//! Fixed-size binary records of the `events` and `events.idx` files: the file
//! preambles, the chunk header and the chunk index entry. All integers little-endian.
//! Layouts are documented byte by byte in `FORMAT.md`.
use thiserror::Error;

/// Version of the binary layout of `events` / `events.idx` (also in their preambles).
pub const STREAM_VERSION: u32 = 1;
/// Magic at the start of the `events` file.
pub const EVENTS_MAGIC: [u8; 8] = *b"TTVMEVT\0";
/// Magic at the start of the `events.idx` file.
pub const INDEX_MAGIC: [u8; 8] = *b"TTVMIDX\0";
/// Size of the preamble of `events` and `events.idx`.
pub const PREAMBLE_LEN: usize = 16;
/// Magic at the start of every chunk header.
pub const CHUNK_MAGIC: [u8; 4] = *b"TTCK";
/// Size of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 48;
/// Size of an index entry.
pub const INDEX_ENTRY_LEN: usize = 64;
/// Largest raw (decompressed) chunk a reader accepts; a writer never produces more.
pub const MAX_CHUNK_RAW_LEN: u32 = 256 << 20;

/// Why a fixed-size record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The magic bytes are wrong.
    #[error("bad magic {found:02x?} (expected {expected:02x?})")]
    BadMagic {
        /// What the record should start with.
        expected: Vec<u8>,
        /// What it starts with.
        found: Vec<u8>,
    },
    /// The record's own checksum does not match.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The layout version is newer than this reader.
    #[error("stream layout version {found} is newer than this ttvm's ({STREAM_VERSION}): trace made by a newer ttvm; upgrade ttvm to read it")]
    NewerVersion {
        /// Version found.
        found: u32,
    },
    /// A field is outside what any writer produces.
    #[error("{field} is {value}, beyond the limit {limit}")]
    Implausible {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The 16-byte preamble of `events` (with [`EVENTS_MAGIC`]) or `events.idx`.
pub fn encode_preamble(magic: [u8; 8]) -> [u8; PREAMBLE_LEN] {
    let mut b = [0u8; PREAMBLE_LEN];
    b[..8].copy_from_slice(&magic);
    b[8..12].copy_from_slice(&STREAM_VERSION.to_le_bytes());
    b
}

/// Checks a preamble; returns the layout version.
pub fn decode_preamble(magic: [u8; 8], b: &[u8; PREAMBLE_LEN]) -> Result<u32, RecordError> {
    if b[..8] != magic {
        return Err(RecordError::BadMagic {
            expected: magic.to_vec(),
            found: b[..8].to_vec(),
        });
    }
    let version = u32_at(b, 8);
    if version > STREAM_VERSION {
        return Err(RecordError::NewerVersion { found: version });
    }
    let reserved = u32_at(b, 12);
    if reserved != 0 {
        return Err(RecordError::Implausible {
            field: "reserved preamble word",
            value: reserved.into(),
            limit: 0,
        });
    }
    Ok(version)
}

/// The header in front of every compressed chunk of the `events` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Length of the zstd payload that follows the header.
    pub compressed_len: u32,
    /// Length of the raw event bytes once decompressed.
    pub raw_len: u32,
    /// Number of events in the chunk (at least 1).
    pub event_count: u32,
    /// Index of the chunk's first event in the whole stream.
    pub first_event: u64,
    /// Position the first event's delta is relative to (last position of the previous
    /// chunk, 0 for the first chunk).
    pub base_position: u64,
    /// Position of the chunk's last event.
    pub last_position: u64,
    /// CRC-32 (IEEE) of the compressed payload.
    pub payload_crc: u32,
}

impl ChunkHeader {
    /// Serializes the header, computing its own checksum.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4..8].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.event_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_event.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_position.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_position.to_le_bytes());
        b[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates a header (magic, checksum, plausible sizes).
    pub fn decode(b: &[u8; CHUNK_HEADER_LEN]) -> Result<Self, RecordError> {
        if b[0..4] != CHUNK_MAGIC {
            return Err(RecordError::BadMagic {
                expected: CHUNK_MAGIC.to_vec(),
                found: b[0..4].to_vec(),
            });
        }
        let stored = u32_at(b, 44);
        let computed = crc32fast::hash(&b[..44]);
        if stored != computed {
            return Err(RecordError::BadChecksum { stored, computed });
        }
        let h = ChunkHeader {
            compressed_len: u32_at(b, 4),
            raw_len: u32_at(b, 8),
            event_count: u32_at(b, 12),
            first_event: u64_at(b, 16),
            base_position: u64_at(b, 24),
            last_position: u64_at(b, 32),
            payload_crc: u32_at(b, 40),
        };
        h.check_plausible()?;
        Ok(h)
    }

    fn check_plausible(&self) -> Result<(), RecordError> {
        let limit = u64::from(MAX_CHUNK_RAW_LEN);
        if self.raw_len > MAX_CHUNK_RAW_LEN {
            return Err(RecordError::Implausible {
                field: "raw length",
                value: self.raw_len.into(),
                limit,
            });
        }
        // zstd never expands data by more than a small fraction.
        let max_compressed = u64::from(self.raw_len) + u64::from(self.raw_len) / 64 + 1024;
        if u64::from(self.compressed_len) > max_compressed {
            return Err(RecordError::Implausible {
                field: "compressed length",
                value: self.compressed_len.into(),
                limit: max_compressed,
            });
        }
        // Every event takes at least 2 raw bytes (tag + delta).
        let max_events = u64::from(self.raw_len) / 2;
        if self.event_count == 0 || u64::from(self.event_count) > max_events {
            return Err(RecordError::Implausible {
                field: "event count",
                value: self.event_count.into(),
                limit: max_events,
            });
        }
        if self.last_position < self.base_position {
            return Err(RecordError::Implausible {
                field: "last position (below the base position)",
                value: self.last_position,
                limit: self.base_position,
            });
        }
        Ok(())
    }

    /// Total size on disk (header + payload).
    pub fn disk_len(&self) -> u64 {
        CHUNK_HEADER_LEN as u64 + u64::from(self.compressed_len)
    }

    /// Index one past the chunk's last event.
    pub fn end_event(&self) -> u64 {
        self.first_event.saturating_add(u64::from(self.event_count))
    }
}

/// One entry of `events.idx`: where a chunk lives and a copy of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the chunk header in `events`.
    pub offset: u64,
    /// Copy of the chunk header.
    pub header: ChunkHeader,
}

impl IndexEntry {
    /// Serializes the entry with its checksum.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..56].copy_from_slice(&self.header.encode());
        let crc = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates an entry.
    pub fn decode(b: &[u8; INDEX_ENTRY_LEN]) -> Result<Self, RecordError> {
        let stored = u32_at(b, 56);
        let computed = crc32fast::hash(&b[..56]);
        if stored != computed {
            return Err(RecordError::BadChecksum { stored, computed });
        }
        let mut hb = [0u8; CHUNK_HEADER_LEN];
        hb.copy_from_slice(&b[8..56]);
        Ok(IndexEntry {
            offset: u64_at(b, 0),
            header: ChunkHeader::decode(&hb)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkHeader {
        ChunkHeader {
            compressed_len: 100,
            raw_len: 400,
            event_count: 100,
            first_event: 5,
            base_position: 10,
            last_position: 99,
            payload_crc: 0xdead_beef,
        }
    }

    #[test]
    fn header_and_index_round_trip() {
        let h = sample();
        assert_eq!(ChunkHeader::decode(&h.encode()), Ok(h));
        let e = IndexEntry {
            offset: 16,
            header: h,
        };
        assert_eq!(IndexEntry::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let h = sample().encode();
        for byte in 0..CHUNK_HEADER_LEN {
            for bit in 0..8 {
                let mut b = h;
                b[byte] ^= 1 << bit;
                assert!(ChunkHeader::decode(&b).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn newer_layout_is_refused() {
        let mut p = encode_preamble(EVENTS_MAGIC);
        p[8] = 99;
        assert_eq!(
            decode_preamble(EVENTS_MAGIC, &p),
            Err(RecordError::NewerVersion { found: 99 })
        );
    }
}
