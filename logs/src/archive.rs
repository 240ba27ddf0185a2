//! Single-file trace archives (`ttvm export` / `ttvm import`), for CI artifacts and for
//! moving a trace between machines.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic    8 bytes  "TTVMARC\0"
//! version  u32      ARCHIVE_VERSION
//! name     u16 len + UTF-8   the trace directory's name (e.g. "race-3")
//! entries  one per directory or file of the trace, parents before children:
//!          b'D' u16 len + path                      a directory
//!          b'F' u16 len + path, u64 size, size bytes  a file
//! end      b'E' u64 number of entries
//! sha256   32 bytes: SHA-256 of every byte above
//! ```
//!
//! Paths are relative, `/`-separated, with no empty, `.` or `..` component. The trace files
//! are stored as they are (events and guest image are already zstd-compressed). Import
//! writes into a fresh temporary directory next to the destination, verifies the
//! checksum and the trace header, and only then renames it into place: a damaged or
//! truncated archive leaves nothing behind, and an existing trace is never overwritten.
use crate::files::{self, FileError};
use crate::fsutil::{self, temp_sibling};
use crate::header::{HeaderError, TraceHeader};
use crate::location::valid_trace_name;
use sha2::{Digest, Sha256};
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The first bytes of every archive.
pub const ARCHIVE_MAGIC: &[u8; 8] = b"TTVMARC\0";
/// The archive format this ttvm writes (and the newest it reads).
pub const ARCHIVE_VERSION: u32 = 1;
/// The usual file extension of an archive.
pub const ARCHIVE_EXTENSION: &str = "ttvm";
const MAX_PATH: usize = 4096;
const TAG_DIR: u8 = b'D';
const TAG_FILE: u8 = b'F';
const TAG_END: u8 = b'E';

/// Errors exporting or importing an archive.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// An I/O operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The archive to import is missing, not a regular file or unreadable.
    #[error("cannot import: {0}")]
    Archive(#[source] FileError),
    /// A file of the trace to export is not a regular file, or unreadable.
    #[error("cannot export: {0}")]
    TraceFile(#[source] FileError),
    /// The trace to export holds something other than files and directories.
    #[error("cannot archive {path}: only regular files and directories can be archived")]
    Unsupported {
        /// The offending entry.
        path: PathBuf,
    },
    /// The destination exists.
    #[error("refusing to overwrite {path}: it already exists")]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// The file does not start like an archive.
    #[error("{path} is not a ttvm trace archive (it does not start with the archive magic)")]
    NotAnArchive {
        /// The file.
        path: PathBuf,
    },
    /// The archive needs a newer ttvm.
    #[error("{path} is a version {version} archive; this ttvm reads version {ARCHIVE_VERSION}: upgrade ttvm")]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The archive ends before its checksum.
    #[error("{path} is truncated: it ends at byte {offset}, {context}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        offset: u64,
        /// What was being read.
        context: String,
    },
    /// The archive holds something it cannot hold.
    #[error("{path} is damaged at byte {offset}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The contents do not match the checksum.
    #[error("{path} is damaged: its SHA-256 checksum does not match its contents (recorded {recorded}, computed {computed})")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum stored in the archive.
        recorded: String,
        /// The checksum of what was read.
        computed: String,
    },
    /// The directory to export, or the archived trace, has no valid header.
    #[error("not a readable trace: {0}")]
    Header(#[from] HeaderError),
    /// The trace root's `latest-trace` link could not be updated.
    #[error(transparent)]
    Location(#[from] crate::location::LocationError),
}

impl ArchiveError {
    /// True when the archive itself is bad (as opposed to the destination or the disk).
    pub fn is_damaged(&self) -> bool {
        matches!(
            self,
            ArchiveError::Archive(FileError::NotRegular { .. })
                | ArchiveError::NotAnArchive { .. }
                | ArchiveError::NewerVersion { .. }
                | ArchiveError::Truncated { .. }
                | ArchiveError::Corrupt { .. }
                | ArchiveError::Checksum { .. }
                | ArchiveError::Header(_)
        )
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The archive file.
    pub file: PathBuf,
    /// Its size.
    pub archive_bytes: u64,
    /// Total size of the trace's files.
    pub trace_bytes: u64,
    /// Files and directories archived.
    pub entries: u64,
    /// SHA-256 of the archive contents, lowercase hex.
    pub sha256: String,
}

/// What `import` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The new trace directory.
    pub dir: PathBuf,
    /// Total size of its files.
    pub trace_bytes: u64,
    /// Files and directories restored.
    pub entries: u64,
    /// SHA-256 of the archive contents, lowercase hex.
    pub sha256: String,
}

/// Where `import` puts the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportTarget {
    /// `<root>/<name from the archive>`; `latest-trace` then points at it.
    InRoot(PathBuf),
    /// Exactly this directory, which must not exist.
    Exact(PathBuf),
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_path<W: Write>(w: &mut W, tag: u8, rel: &str) -> io::Result<()> {
    let len = u16::try_from(rel.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
    w.write_all(&[tag])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(rel.as_bytes())
}

/// The entries of `dir` (recursively, sorted, parents first) as (relative path, is_dir).
fn walk(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf, bool)>,
) -> Result<(), ArchiveError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err("list", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            return Err(ArchiveError::Unsupported { path });
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = e.file_type().map_err(io_err("inspect", &path))?;
        if kind.is_dir() {
            out.push((rel.clone(), path.clone(), true));
            walk(&path, &rel, out)?;
        } else if kind.is_file() {
            out.push((rel, path, false));
        } else {
            return Err(ArchiveError::Unsupported { path });
        }
    }
    Ok(())
}

/// Writes the trace in `trace_dir` to the new file `out` (never overwriting it).
pub fn export(trace_dir: &Path, out: &Path) -> Result<ExportSummary, ArchiveError> {
    TraceHeader::read(trace_dir)?;
    let name = trace_dir
        .canonicalize()
        .map_err(io_err("resolve", trace_dir))?
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| ArchiveError::Unsupported {
            path: trace_dir.to_path_buf(),
        })?;
    if out.symlink_metadata().is_ok() {
        return Err(ArchiveError::Exists {
            path: out.to_path_buf(),
        });
    }
    let mut entries = Vec::new();
    walk(trace_dir, "", &mut entries)?;
    let tmp = temp_sibling(out, "tmp");
    let result = write_archive(&tmp, &name, &entries).and_then(|summary| {
        // A hard link fails if `out` appeared meanwhile: nothing is ever overwritten.
        fs::hard_link(&tmp, out).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => ArchiveError::Exists {
                path: out.to_path_buf(),
            },
            _ => ArchiveError::Io {
                op: "create",
                path: out.to_path_buf(),
                source,
            },
        })?;
        Ok(summary)
    });
    let _ = fs::remove_file(&tmp);
    let (archive_bytes, trace_bytes, sha256) = result?;
    if let Some(parent) = out.parent() {
        fsutil::sync_dir(parent).map_err(io_err("sync", parent))?;
    }
    Ok(ExportSummary {
        file: out.to_path_buf(),
        archive_bytes,
        trace_bytes,
        entries: entries.len() as u64,
        sha256,
    })
}

fn write_archive(
    tmp: &Path,
    name: &str,
    entries: &[(String, PathBuf, bool)],
) -> Result<(u64, u64, String), ArchiveError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let werr = io_err("write", tmp);
    let mut trace_bytes = 0;
    let head: io::Result<()> = (|| {
        w.write_all(ARCHIVE_MAGIC)?;
        w.write_all(&ARCHIVE_VERSION.to_le_bytes())?;
        let len = u16::try_from(name.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "trace name too long"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(name.as_bytes())
    })();
    head.map_err(werr)?;
    for (rel, path, is_dir) in entries {
        if *is_dir {
            write_path(&mut w, TAG_DIR, rel).map_err(io_err("write", tmp))?;
            continue;
        }
        // Checked again as it is opened: an entry replaced by a FIFO since the walk must
        // not block the export.
        let (mut f, size) = files::open_regular(path).map_err(ArchiveError::TraceFile)?;
        let copied: io::Result<u64> = (|| {
            write_path(&mut w, TAG_FILE, rel)?;
            w.write_all(&size.to_le_bytes())?;
            // Exactly `size` bytes, even if the file changes under us.
            io::copy(&mut (&mut f).take(size), &mut w)
        })();
        if copied.map_err(io_err("write", tmp))? != size {
            return Err(ArchiveError::Io {
                op: "archive",
                path: path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "it shrank while being archived",
                ),
            });
        }
        trace_bytes += size;
    }
    let tail: io::Result<()> = (|| {
        w.write_all(&[TAG_END])?;
        w.write_all(&(entries.len() as u64).to_le_bytes())
    })();
    tail.map_err(io_err("write", tmp))?;
    let digest = w.hasher.finalize_reset();
    let mut inner = w.inner;
    inner.write_all(&digest).map_err(io_err("write", tmp))?;
    let file = inner.into_inner().map_err(|e| ArchiveError::Io {
        op: "write",
        path: tmp.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err("sync", tmp))?;
    Ok((w.written + 32, trace_bytes, hex(&digest)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads an archive, hashing and counting every byte.
struct Source<'a, R> {
    inner: R,
    hasher: Sha256,
    offset: u64,
    /// Size of the archive file: nothing in it can be longer than what is left.
    len: u64,
    path: &'a Path,
}

impl<R: Read> Source<'_, R> {
    fn truncated(&self, context: impl Into<String>) -> ArchiveError {
        ArchiveError::Truncated {
            path: self.path.to_path_buf(),
            offset: self.offset,
            context: context.into(),
        }
    }

    fn corrupt(&self, at: u64, detail: impl Into<String>) -> ArchiveError {
        ArchiveError::Corrupt {
            path: self.path.to_path_buf(),
            offset: at,
            detail: detail.into(),
        }
    }

    /// Fills `buf`; fewer bytes than asked means the archive is truncated.
    fn fill(&mut self, buf: &mut [u8], hash: bool, context: &str) -> Result<(), ArchiveError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => return Err(self.truncated(format!("in the middle of {context}"))),
                Ok(n) => {
                    if hash {
                        self.hasher.update(&buf[done..done + n]);
                    }
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ArchiveError::Io {
                        op: "read",
                        path: self.path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn u8(&mut self, context: &str) -> Result<u8, ArchiveError> {
        let mut b = [0u8; 1];
        self.fill(&mut b, true, context)?;
        Ok(b[0])
    }

    fn u16(&mut self, context: &str) -> Result<u16, ArchiveError> {
        let mut b = [0u8; 2];
        self.fill(&mut b, true, context)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u64(&mut self, context: &str) -> Result<u64, ArchiveError> {
        let mut b = [0u8; 8];
        self.fill(&mut b, true, context)?;
        Ok(u64::from_le_bytes(b))
    }

    fn text(&mut self, len: usize, context: &str) -> Result<String, ArchiveError> {
        let at = self.offset;
        let mut b = vec![0u8; len];
        self.fill(&mut b, true, context)?;
        String::from_utf8(b).map_err(|_| self.corrupt(at, format!("{context} is not UTF-8")))
    }

    /// A validated relative path.
    fn path(&mut self) -> Result<String, ArchiveError> {
        let at = self.offset;
        let len = usize::from(self.u16("an entry's path length")?);
        let rel = self.text(len, "an entry's path")?;
        if !safe_relative(&rel) {
            return Err(self.corrupt(at, format!("unsafe path {rel:?} in the archive")));
        }
        Ok(rel)
    }
}

/// A non-empty relative `/`-separated path with no empty, `.` or `..` component.
fn safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && rel.len() <= MAX_PATH
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Restores the trace in `archive` to `target`. Nothing is left behind on failure.
pub fn import(archive: &Path, target: &ImportTarget) -> Result<ImportSummary, ArchiveError> {
    let (file, len) = files::open_regular(archive).map_err(ArchiveError::Archive)?;
    let mut src = Source {
        inner: BufReader::with_capacity(1 << 16, file),
        hasher: Sha256::new(),
        offset: 0,
        len,
        path: archive,
    };
    let mut magic = [0u8; 8];
    if src.fill(&mut magic, true, "the archive magic").is_err() || &magic != ARCHIVE_MAGIC {
        return Err(ArchiveError::NotAnArchive {
            path: archive.to_path_buf(),
        });
    }
    let mut version = [0u8; 4];
    src.fill(&mut version, true, "the format version")?;
    let version = u32::from_le_bytes(version);
    if version > ARCHIVE_VERSION || version == 0 {
        return Err(ArchiveError::NewerVersion {
            path: archive.to_path_buf(),
            version,
        });
    }
    let at = src.offset;
    let len = usize::from(src.u16("the trace name")?);
    let name = src.text(len, "the trace name")?;
    if !valid_trace_name(&name) {
        return Err(src.corrupt(at, format!("unusable trace name {name:?}")));
    }
    let dest = match target {
        ImportTarget::InRoot(root) => {
            fs::create_dir_all(root).map_err(io_err("create", root))?;
            root.join(&name)
        }
        ImportTarget::Exact(dir) => dir.clone(),
    };
    if dest.symlink_metadata().is_ok() {
        return Err(ArchiveError::Exists { path: dest });
    }
    let tmp = temp_sibling(&dest, "import");
    fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    let result = unpack(&mut src, &tmp).and_then(|(entries, trace_bytes, sha256)| {
        TraceHeader::read(&tmp)?;
        fsutil::sync_dir(&tmp).map_err(io_err("sync", &tmp))?;
        // rename(2) never replaces a non-empty directory: an existing trace is safe.
        if dest.symlink_metadata().is_ok() {
            return Err(ArchiveError::Exists { path: dest.clone() });
        }
        fs::rename(&tmp, &dest).map_err(io_err("create", &dest))?;
        Ok((entries, trace_bytes, sha256))
    });
    let (entries, trace_bytes, sha256) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Some(parent) = dest.parent() {
        let _ = fsutil::sync_dir(parent);
    }
    if let ImportTarget::InRoot(root) = target {
        crate::location::update_latest(root, &dest)?;
    }
    Ok(ImportSummary {
        dir: dest,
        trace_bytes,
        entries,
        sha256,
    })
}

/// Writes the entries of `src` under `dir` and checks the checksum.
fn unpack<R: Read>(
    src: &mut Source<'_, R>,
    dir: &Path,
) -> Result<(u64, u64, String), ArchiveError> {
    let mut entries = 0u64;
    let mut trace_bytes = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let at = src.offset;
        match src.u8("an entry tag")? {
            TAG_END => break,
            TAG_DIR => {
                let rel = src.path()?;
                let path = dir.join(&rel);
                fs::create_dir_all(&path).map_err(io_err("create", &path))?;
            }
            TAG_FILE => {
                let rel = src.path()?;
                let size = src.u64("a file size")?;
                let left = src.len.saturating_sub(src.offset);
                if size > left {
                    return Err(ArchiveError::Truncated {
                        path: src.path.to_path_buf(),
                        offset: src.len,
                        context: format!(
                            "yet {rel} at byte {at} claims {size} bytes and only {left} remain"
                        ),
                    });
                }
                let path = dir.join(&rel);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => {
                            src.corrupt(at, format!("{rel} appears twice"))
                        }
                        _ => ArchiveError::Io {
                            op: "create",
                            path: path.clone(),
                            source: e,
                        },
                    })?;
                let mut left = size;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    let context = format!("{rel} ({} of its {size} bytes read)", size - left);
                    src.fill(&mut buf[..n], true, &context)?;
                    out.write_all(&buf[..n]).map_err(io_err("write", &path))?;
                    left -= n as u64;
                }
                out.sync_all().map_err(io_err("sync", &path))?;
                trace_bytes += size;
            }
            tag => return Err(src.corrupt(at, format!("unknown entry tag {tag:#04x}"))),
        }
        entries += 1;
    }
    let at = src.offset;
    let count = src.u64("the entry count")?;
    if count != entries {
        return Err(src.corrupt(
            at,
            format!("the archive says {count} entries, it holds {entries}"),
        ));
    }
    let computed = src.hasher.clone().finalize();
    let mut recorded = [0u8; 32];
    src.fill(&mut recorded, false, "the SHA-256 checksum")?;
    if recorded[..] != computed[..] {
        return Err(ArchiveError::Checksum {
            path: src.path.to_path_buf(),
            recorded: hex(&recorded),
            computed: hex(&computed),
        });
    }
    let mut extra = [0u8; 1];
    if src.fill(&mut extra, false, "").is_ok() {
        return Err(src.corrupt(src.offset - 1, "bytes after the checksum"));
    }
    Ok((entries, trace_bytes, hex(&computed)))
}

/// The name `export` gives an archive of `trace_dir` by default: `<name>.ttvm`.
pub fn default_archive_name(trace_dir: &Path) -> PathBuf {
    let name = trace_dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "trace".to_string());
    PathBuf::from(format!("{name}.{ARCHIVE_EXTENSION}"))
}
