//! Opening the files ttvm reads (trace files, archives, guest images) without trusting
//! what sits at their paths.
//!
//! A path in a trace directory, in an archive's destination or on the command line may
//! name a FIFO (opening it for reading blocks until a writer appears), a device (a link
//! to `/dev/zero` never ends), a directory or a file far larger than its format allows.
//! Every read here therefore:
//!
//! 1. checks with `stat` that the path is a regular file (devices are never opened);
//! 2. opens it with `O_NONBLOCK | O_NOCTTY`, so even a FIFO swapped in after the check
//!    cannot block the open, and checks the opened descriptor again with `fstat`;
//! 3. reads at most a limit the caller derives from the format, refusing larger files.
//!
//! `O_NONBLOCK` has no effect on reads of a regular file, so the returned [`File`] reads
//! normally.
use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file could not be opened or read.
#[derive(Debug, Error)]
pub enum FileError {
    /// Nothing exists at the path.
    #[error("{path}: no such file")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The path is something other than a regular file.
    #[error("{path} is {kind}, not a regular file: ttvm reads only regular files")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is ("a FIFO (named pipe)", "a character device"...).
        kind: &'static str,
    },
    /// The path should be a directory and is not.
    #[error("{path} is {kind}, not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than its format allows.
    #[error("{path} is {size} bytes, more than {what} can be ({limit} bytes at most)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least; it may still be growing).
        size: u64,
        /// The largest size accepted.
        limit: u64,
        /// What the file is supposed to hold ("a trace header"...).
        what: &'static str,
    },
    /// An I/O operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// "a FIFO (named pipe)", "a character device"... for messages.
pub fn describe_type(t: &FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

fn stat_error(path: &Path, source: io::Error) -> FileError {
    match source.kind() {
        io::ErrorKind::NotFound => FileError::Missing {
            path: path.to_path_buf(),
        },
        _ => FileError::Io {
            op: "inspect",
            path: path.to_path_buf(),
            source,
        },
    }
}

fn require_regular(path: &Path, t: &FileType) -> Result<(), FileError> {
    if t.is_file() {
        return Ok(());
    }
    Err(FileError::NotRegular {
        path: path.to_path_buf(),
        kind: describe_type(t),
    })
}

/// Checks that `path` is a directory (following symbolic links).
pub fn require_dir(path: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(path).map_err(|e| stat_error(path, e))?;
    if meta.is_dir() {
        return Ok(());
    }
    Err(FileError::NotADirectory {
        path: path.to_path_buf(),
        kind: describe_type(&meta.file_type()),
    })
}

/// Opens the regular file `path` for reading without ever blocking; returns it with its
/// size (from `fstat` on the opened descriptor).
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    // Devices and FIFOs are refused before any open (opening some devices has effects).
    let before = std::fs::metadata(path).map_err(|e| stat_error(path, e))?;
    require_regular(path, &before.file_type())?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => FileError::Missing {
                path: path.to_path_buf(),
            },
            _ => FileError::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            },
        })?;
    // The path may have been replaced between the check and the open.
    let meta = file.metadata().map_err(|source| FileError::Io {
        op: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    require_regular(path, &meta.file_type())?;
    Ok((file, meta.len()))
}

fn read_up_to(mut file: File, size: u64, max: u64, path: &Path) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size.min(max)).unwrap_or(0));
    (&mut file)
        .take(max)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Reads the whole regular file `path`, which must hold at most `limit` bytes (`what`
/// names its contents in the error: "a trace header").
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path)?;
    let too_large = |size| FileError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        what,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let bytes = read_up_to(file, size, limit.saturating_add(1), path)?;
    if bytes.len() as u64 > limit {
        // It grew while being read.
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads at most the first `max` bytes of the regular file `path` (for files whose useful
/// length the format bounds but which may legitimately hold more, such as an index being
/// appended to).
pub fn read_prefix(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path)?;
    read_up_to(file, size, max, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        mkfifo(&fifo);
        let err = read_bounded(&fifo, 100, "a test file").unwrap_err();
        assert!(matches!(err, FileError::NotRegular { .. }), "{err}");
        assert!(err.to_string().contains("is a FIFO (named pipe)"), "{err}");
        let zero = tmp.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read_prefix(&zero, 100).unwrap_err();
        assert!(err.to_string().contains("is a character device"), "{err}");
        let err = read_bounded(tmp.path(), 100, "a test file").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = read_bounded(&tmp.path().join("none"), 100, "x").unwrap_err();
        assert!(matches!(err, FileError::Missing { .. }), "{err}");
        assert!(matches!(
            require_dir(&fifo),
            Err(FileError::NotADirectory { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, [1u8; 10]).unwrap();
        assert_eq!(read_bounded(&f, 10, "x").unwrap().len(), 10);
        let err = read_bounded(&f, 9, "a test file").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is 10 bytes, more than a test file can be (9 bytes at most)",
                f.display()
            )
        );
        assert_eq!(read_prefix(&f, 4).unwrap(), [1u8; 4]);
    }
}
