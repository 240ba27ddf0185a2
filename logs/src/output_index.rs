//! `output.idx`: the guest's serial output with the position of every byte, a cache kept
//! in a closed trace's directory.
//!
//! It is derived data: the replayer builds it by replaying the trace once (replay is
//! deterministic) the first time something asks where output was written, and writes it
//! here so later sessions skip that replay. A missing, stale or damaged file is rebuilt; a
//! trace directory that cannot be written to only costs the rebuild next time. The file
//! names the trace it belongs to (a CRC-32 of `header.json` with its close record, the
//! final position, the event count), so a copy next to another trace is never believed.
//!
//! Layout (little-endian), version 1:
//!
//! ```text
//!   0  [u8; 8]  magic "TTVMOUT\0"
//!   8  u32      version (1)
//!  12  u32      CRC-32 of header.json
//!  16  u64      final position of the trace
//!  24  u64      event count of the trace
//!  32  u64      n, the number of output bytes
//!  40  u64      length of the delta section
//!  48  u32      CRC-32 of the payload (bytes 64..)
//!  52  u32      zero
//!  56  u32      zero
//!  60  u32      CRC-32 of bytes 0..60
//!  64  [u8; n]  the output bytes, in order
//!      deltas   n LEB128 varints: each byte's position minus the previous byte's (the
//!               first one's minus 0); positions never decrease
//! ```

use std::path::Path;

use crate::files::{self, FileError};
use crate::fsutil;
use crate::header::{TraceHeader, HEADER_FILE, MAX_HEADER_BYTES};

/// The cache file's name in a trace directory.
pub const OUTPUT_INDEX_FILE: &str = "output.idx";
/// Version of the layout above.
pub const OUTPUT_INDEX_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"TTVMOUT\0";
const PREAMBLE: usize = 64;
/// The most output bytes an index holds (a larger output is indexed in memory only).
pub const MAX_OUTPUT_BYTES: u64 = 256 << 20;
/// A varint of a u64 takes at most 10 bytes.
const MAX_FILE_BYTES: u64 = PREAMBLE as u64 + 11 * MAX_OUTPUT_BYTES;

/// The guest's serial output, each byte with the position of the instruction that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialTranscript {
    pub bytes: Vec<u8>,
    /// One per byte, non-decreasing.
    pub positions: Vec<u64>,
}

impl SerialTranscript {
    /// Appends bytes written at `position`.
    pub fn push(&mut self, position: u64, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.positions
            .extend(std::iter::repeat_n(position, bytes.len()));
    }

    /// The output written by the instructions before `position` (not the one at it).
    pub fn before(&self, position: u64) -> &[u8] {
        let n = self.positions.partition_point(|&p| p < position);
        &self.bytes[..n]
    }
}

/// Which trace an index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputIndexKey {
    pub header_crc: u32,
    pub final_position: u64,
    pub event_count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputIndexError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} output bytes: more than an output index holds")]
    TooLarge(u64),
}

/// The key of the closed trace at `dir`; None while it is not closed (still being
/// recorded, or its recorder died): such a trace is indexed in memory only.
pub fn output_index_key(dir: &Path) -> Result<Option<OutputIndexKey>, OutputIndexError> {
    let bytes = files::read_bounded(&dir.join(HEADER_FILE), MAX_HEADER_BYTES, "a trace header")?;
    let header: TraceHeader = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    Ok(header.close.map(|close| OutputIndexKey {
        header_crc: crc32fast::hash(&bytes),
        final_position: close.final_position,
        event_count: close.event_count,
    }))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
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

/// Encodes `t` for trace `key`.
pub fn encode(key: &OutputIndexKey, t: &SerialTranscript) -> Result<Vec<u8>, OutputIndexError> {
    let n = t.bytes.len() as u64;
    if n > MAX_OUTPUT_BYTES || t.positions.len() != t.bytes.len() {
        return Err(OutputIndexError::TooLarge(n));
    }
    let mut deltas = Vec::with_capacity(t.bytes.len() * 2);
    let mut prev = 0u64;
    for &p in &t.positions {
        put_varint(&mut deltas, p.saturating_sub(prev));
        prev = prev.max(p);
    }
    let mut out = Vec::with_capacity(PREAMBLE + t.bytes.len() + deltas.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&OUTPUT_INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&key.header_crc.to_le_bytes());
    out.extend_from_slice(&key.final_position.to_le_bytes());
    out.extend_from_slice(&key.event_count.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(deltas.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&t.bytes);
    crc.update(&deltas);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    let head_crc = crc32fast::hash(&out);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&t.bytes);
    out.extend_from_slice(&deltas);
    Ok(out)
}

/// Decodes an index: Ok(None) if it belongs to another trace (or another version),
/// an error if it is damaged.
pub fn decode(
    bytes: &[u8],
    key: &OutputIndexKey,
    path: &str,
) -> Result<Option<SerialTranscript>, OutputIndexError> {
    let corrupt = |detail: String| OutputIndexError::Corrupt {
        path: path.to_string(),
        detail,
    };
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC {
        return Err(corrupt(
            "not an output index (bad magic or too short)".into(),
        ));
    }
    if crc32fast::hash(&bytes[..60]) != u32_at(bytes, 60) {
        return Err(corrupt("its preamble fails its checksum".into()));
    }
    if u32_at(bytes, 8) != OUTPUT_INDEX_VERSION {
        return Ok(None);
    }
    let found = OutputIndexKey {
        header_crc: u32_at(bytes, 12),
        final_position: u64_at(bytes, 16),
        event_count: u64_at(bytes, 24),
    };
    if found != *key {
        return Ok(None);
    }
    let n = u64_at(bytes, 32);
    let delta_len = u64_at(bytes, 40);
    let payload = &bytes[PREAMBLE..];
    if n > MAX_OUTPUT_BYTES || n.checked_add(delta_len) != Some(payload.len() as u64) {
        return Err(corrupt(format!(
            "it claims {n} bytes and {delta_len} bytes of positions, and holds {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != u32_at(bytes, 48) {
        return Err(corrupt("its contents fail their checksum".into()));
    }
    let n = n as usize;
    let (out, deltas) = payload.split_at(n);
    let mut positions = Vec::with_capacity(n);
    let (mut at, mut pos) = (0usize, 0u64);
    for i in 0..n {
        let d = get_varint(deltas, &mut at)
            .ok_or_else(|| corrupt(format!("the position of byte {i} is cut short")))?;
        pos = pos
            .checked_add(d)
            .filter(|&p| p <= key.final_position)
            .ok_or_else(|| corrupt(format!("byte {i} lies beyond the trace's end")))?;
        positions.push(pos);
    }
    if at != deltas.len() {
        return Err(corrupt("trailing bytes after the positions".into()));
    }
    Ok(Some(SerialTranscript {
        bytes: out.to_vec(),
        positions,
    }))
}

/// The index cached in trace `dir`: Ok(None) if there is none for this trace.
pub fn read_output_index(
    dir: &Path,
    key: &OutputIndexKey,
) -> Result<Option<SerialTranscript>, OutputIndexError> {
    let path = dir.join(OUTPUT_INDEX_FILE);
    let bytes = match files::read_bounded(&path, MAX_FILE_BYTES, "an output index") {
        Ok(b) => b,
        Err(FileError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(&bytes, key, &path.display().to_string())
}

/// Writes the index of trace `dir` (atomically: readers see all of it or none).
pub fn write_output_index(
    dir: &Path,
    key: &OutputIndexKey,
    t: &SerialTranscript,
) -> Result<(), OutputIndexError> {
    let path = dir.join(OUTPUT_INDEX_FILE);
    let bytes = encode(key, t)?;
    fsutil::write_atomic(&path, &bytes).map_err(|source| OutputIndexError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: OutputIndexKey = OutputIndexKey {
        header_crc: 7,
        final_position: 1 << 40,
        event_count: 3,
    };

    fn sample() -> SerialTranscript {
        let mut t = SerialTranscript::default();
        t.push(10, b"hello\n");
        t.push(200, b"x");
        t.push(1 << 39, b"\xffend");
        t
    }

    #[test]
    fn round_trip_and_before() {
        let t = sample();
        let bytes = encode(&KEY, &t).unwrap();
        assert_eq!(decode(&bytes, &KEY, "f").unwrap(), Some(t.clone()));
        assert_eq!(t.before(10), b"");
        assert_eq!(t.before(11), b"hello\n");
        assert_eq!(t.before(201), b"hello\nx");
        let empty = SerialTranscript::default();
        let bytes = encode(&KEY, &empty).unwrap();
        assert_eq!(decode(&bytes, &KEY, "f").unwrap(), Some(empty));
    }

    #[test]
    fn another_trace_is_stale_and_damage_is_an_error() {
        let bytes = encode(&KEY, &sample()).unwrap();
        let other = OutputIndexKey {
            event_count: 4,
            ..KEY
        };
        assert_eq!(decode(&bytes, &other, "f").unwrap(), None);
        for i in [0, 20, 61, 64, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, &KEY, "f").is_err(), "flip at {i}");
        }
        for len in [0, 10, 63, 64, bytes.len() - 1] {
            assert!(decode(&bytes[..len], &KEY, "f").is_err(), "cut at {len}");
        }
    }

    #[test]
    fn positions_beyond_the_end_are_refused() {
        let short = OutputIndexKey {
            final_position: 100,
            ..KEY
        };
        let bytes = encode(&short, &sample()).unwrap();
        assert!(decode(&bytes, &short, "f").is_err());
    }

    #[test]
    fn files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_output_index(dir.path(), &KEY).unwrap(), None);
        write_output_index(dir.path(), &KEY, &sample()).unwrap();
        assert_eq!(read_output_index(dir.path(), &KEY).unwrap(), Some(sample()));
    }
}
