//! Checkpoint files: opaque snapshots (filled by the checkpoint work) stored beside
//! the event stream in `checkpoints/<id>-<position>.ckpt`.
//!
//! Each file is a 32-byte header (magic `TTVMCKPT`, position u64, raw length u64,
//! CRC-32 of the compressed payload u32, CRC-32 of the header's first 28 bytes u32)
//! followed by the zstd frame (the payload). Files are written to a temporary name and renamed, so a checkpoint is
//! either entirely there or absent.
use crate::files::{self, FileError};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Sub-directory of a trace holding checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";
const MAGIC: [u8; 8] = *b"TTVMCKPT";
const HEADER_LEN: usize = 32;
const ZSTD_LEVEL: i32 = 3;
/// Room for a snapshot's machine state beside guest memory (vCPU, devices, clock: tens
/// of KiB in practice).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// The largest checkpoint (uncompressed) a machine with `mem_bytes` of RAM can produce:
/// every page with its 5-byte page header, plus the machine state. Readers refuse more.
pub fn max_raw_len(mem_bytes: u64) -> u64 {
    mem_bytes
        .saturating_add(mem_bytes / 4096 * 5)
        .saturating_add(MAX_STATE_BYTES)
}

/// The largest checkpoint file holding at most `max_raw` bytes: zstd never expands data
/// by more than a small fraction (this bound is above zstd's own).
fn max_file_len(max_raw: u64) -> u64 {
    (HEADER_LEN as u64)
        .saturating_add(max_raw)
        .saturating_add(max_raw / 64)
        .saturating_add(64 << 10)
}

/// Identifier of a checkpoint inside its trace (0, 1, 2... in creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId(pub u32);

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A checkpoint as listed (without reading its data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its id.
    pub id: CheckpointId,
    /// Position-clock value it was taken at.
    pub position: u64,
    /// Its file.
    pub path: PathBuf,
    /// Size of the file.
    pub disk_size: u64,
}

/// Errors writing, listing or reading checkpoints.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// An I/O operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is missing, not a regular file, or too large.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is damaged.
    #[error("corrupt checkpoint {path} at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// No checkpoint has this id.
    #[error("no checkpoint {id} in {dir}")]
    NotFound {
        /// The id asked for.
        id: CheckpointId,
        /// The checkpoint directory.
        dir: PathBuf,
    },
}

fn file_name(id: CheckpointId, position: u64) -> String {
    format!("{:06}-{position}.ckpt", id.0)
}

fn parse_name(name: &str) -> Option<(CheckpointId, u64)> {
    let (id, position) = name.strip_suffix(".ckpt")?.split_once('-')?;
    Some((CheckpointId(id.parse().ok()?), position.parse().ok()?))
}

/// Writes checkpoint `id` taken at `position` into `trace_dir`.
pub fn write_checkpoint(
    trace_dir: &Path,
    id: CheckpointId,
    position: u64,
    bytes: &[u8],
) -> Result<CheckpointInfo, CheckpointError> {
    let dir = trace_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(file_name(id, position));
    let payload =
        zstd::stream::encode_all(bytes, ZSTD_LEVEL).map_err(|source| CheckpointError::Io {
            op: "compress checkpoint for",
            path: path.clone(),
            source,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    fsutil::write_atomic(&path, &out).map_err(|source| CheckpointError::Io {
        op: "write",
        path: path.clone(),
        source,
    })?;
    Ok(CheckpointInfo {
        id,
        position,
        path,
        disk_size: out.len() as u64,
    })
}

/// Lists the checkpoints of `trace_dir` in id order (none if there is no directory).
pub fn list_checkpoints(trace_dir: &Path) -> Result<Vec<CheckpointInfo>, CheckpointError> {
    let dir = trace_dir.join(CHECKPOINT_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                op: "list",
                path: dir,
                source,
            })
        }
    };
    let mut list: Vec<CheckpointInfo> = entries
        .flatten()
        .filter_map(|e| {
            let (id, position) = parse_name(e.file_name().to_str()?)?;
            Some(CheckpointInfo {
                id,
                position,
                path: e.path(),
                disk_size: e.metadata().map(|m| m.len()).unwrap_or(0),
            })
        })
        .collect();
    list.sort_by_key(|c| c.id);
    Ok(list)
}

/// Reads checkpoint `id` of `trace_dir`: its position and its verified bytes, which must
/// be at most `max_raw` (see [`max_raw_len`]).
pub fn read_checkpoint(
    trace_dir: &Path,
    id: CheckpointId,
    max_raw: u64,
) -> Result<(u64, Vec<u8>), CheckpointError> {
    let info = list_checkpoints(trace_dir)?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| CheckpointError::NotFound {
            id,
            dir: trace_dir.join(CHECKPOINT_DIR),
        })?;
    let data = files::read_bounded(
        &info.path,
        max_file_len(max_raw),
        "a checkpoint of this trace's machine",
    )?;
    decode_checkpoint(&info.path, &data, Some(info.position), max_raw)
}

/// Decodes the contents of a checkpoint file (`path` names it in errors): its position
/// and verified bytes. `expected_position` is the one its file name gives; the bytes
/// must be at most `max_raw`.
pub fn decode_checkpoint(
    path: &Path,
    data: &[u8],
    expected_position: Option<u64>,
    max_raw: u64,
) -> Result<(u64, Vec<u8>), CheckpointError> {
    let corrupt = |offset: u64, detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail,
    };
    let header = data
        .get(..HEADER_LEN)
        .ok_or_else(|| corrupt(data.len() as u64, "file shorter than its header".into()))?;
    let word = |at: usize, len: usize| {
        header[at..at + len]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    if header[..8] != MAGIC {
        return Err(corrupt(0, "bad magic".into()));
    }
    if word(28, 4) != u64::from(crc32fast::hash(&header[..28])) {
        return Err(corrupt(28, "header checksum mismatch".into()));
    }
    let position = word(8, 8);
    if expected_position.is_some_and(|p| p != position) {
        return Err(corrupt(
            8,
            format!("position {position} differs from the file name's"),
        ));
    }
    let raw_len = word(16, 8);
    if raw_len > max_raw {
        return Err(corrupt(
            16,
            format!("it claims {raw_len} bytes, more than a snapshot of this machine can hold ({max_raw})"),
        ));
    }
    let payload = &data[HEADER_LEN..];
    if word(24, 4) != u64::from(crc32fast::hash(payload)) {
        return Err(corrupt(
            HEADER_LEN as u64,
            "payload checksum mismatch".into(),
        ));
    }
    let mut bytes = Vec::new();
    zstd::stream::read::Decoder::with_buffer(payload)
        .and_then(|d| d.take(raw_len.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| corrupt(HEADER_LEN as u64, format!("cannot decompress: {e}")))?;
    if bytes.len() as u64 != raw_len {
        return Err(corrupt(
            HEADER_LEN as u64,
            format!("holds {} bytes, header says {raw_len}", bytes.len()),
        ));
    }
    Ok((position, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_list_read() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        write_checkpoint(tmp.path(), CheckpointId(0), 100, &data).unwrap();
        write_checkpoint(tmp.path(), CheckpointId(1), 200, b"").unwrap();
        let list = list_checkpoints(tmp.path()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].id, list[1].position), (CheckpointId(1), 200));
        assert_eq!(
            read_checkpoint(tmp.path(), CheckpointId(0), 1 << 20).unwrap(),
            (100, data)
        );
        assert!(matches!(
            read_checkpoint(tmp.path(), CheckpointId(7), 1 << 20),
            Err(CheckpointError::NotFound { .. })
        ));
    }

    #[test]
    fn damage_is_a_typed_error() {
        let tmp = tempfile::tempdir().unwrap();
        let info = write_checkpoint(tmp.path(), CheckpointId(0), 5, &[7u8; 4096]).unwrap();
        let good = std::fs::read(&info.path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&info.path, &bad).unwrap();
            assert!(
                read_checkpoint(tmp.path(), CheckpointId(0), 1 << 20).is_err(),
                "byte {i}"
            );
        }
        for len in 0..good.len() {
            std::fs::write(&info.path, &good[..len]).unwrap();
            assert!(
                read_checkpoint(tmp.path(), CheckpointId(0), 1 << 20).is_err(),
                "len {len}"
            );
        }
    }
}
