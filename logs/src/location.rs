//! Where traces live: the trace root, `<guest>-<n>` directories, the `latest-trace`
//! link, and resolving what the user named on the command line.
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Environment variable overriding the trace root.
pub const TRACE_DIR_ENV: &str = "TTVM_TRACE_DIR";
/// Name of the symlink to the newest trace inside the root.
pub const LATEST_LINK: &str = "latest-trace";

/// Errors choosing, creating or resolving trace directories.
#[derive(Debug, Error)]
pub enum LocationError {
    /// Neither `$TTVM_TRACE_DIR` nor `$HOME` is set.
    #[error("no trace directory: set {TRACE_DIR_ENV} or HOME")]
    NoRoot,
    /// A directory could not be created.
    #[error("cannot create trace directory {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A directory could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `-o DIR` names a directory that already holds files.
    #[error("refusing to record into {path}: the directory exists and is not empty")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// `-o DIR` names something that is not a directory.
    #[error("refusing to record into {path}: it exists and is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The `latest-trace` link could not be updated.
    #[error("cannot update {path}: {source}")]
    Link {
        /// The link.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// No trace was named and there is no `latest-trace` link.
    #[error("no trace given and no {LATEST_LINK} in {root}: record one with `ttvm record`, or name a trace directory")]
    NoLatest {
        /// The trace root searched.
        root: PathBuf,
    },
    /// The named trace does not exist.
    #[error("no such trace: {name} (looked for {tried:?})")]
    NotFound {
        /// What the user gave.
        name: PathBuf,
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// The guest name cannot be used in a directory name.
    #[error("guest name {name:?} cannot name a trace directory (name one with -o DIR)")]
    BadGuestName {
        /// The name.
        name: String,
    },
}

/// Longest file name Linux allows (NAME_MAX).
const NAME_MAX: usize = 255;

/// Whether `name` can name a trace directory in the trace root: a single valid file
/// name that is not hidden (`.`), cannot be taken for an option (`-`), and is not the
/// `latest-trace` link.
pub fn valid_trace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.contains(['/', '\0'])
        && !name.starts_with(['.', '-'])
        && name != LATEST_LINK
}

/// Where a new trace goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceLocation {
    /// `<root>/<guest>-<n>` with the next free `n`; `<root>/latest-trace` is updated.
    InRoot {
        /// The trace root (see [`default_trace_root`]).
        root: PathBuf,
    },
    /// Exactly this directory (`-o DIR`): created if missing, refused if not empty.
    /// `latest-trace` is not touched.
    Exact(PathBuf),
}

impl TraceLocation {
    /// [`TraceLocation::InRoot`] with the default root.
    pub fn default_root() -> Result<Self, LocationError> {
        Ok(TraceLocation::InRoot {
            root: default_trace_root()?,
        })
    }

    /// Creates the directory for a new trace of `guest_name` and returns its path.
    pub fn create_dir(&self, guest_name: &str) -> Result<PathBuf, LocationError> {
        match self {
            TraceLocation::InRoot { root } => create_numbered(root, guest_name),
            TraceLocation::Exact(dir) => {
                prepare_exact(dir)?;
                Ok(dir.clone())
            }
        }
    }
}

/// `$TTVM_TRACE_DIR` if set and non-empty, else `~/.local/share/ttvm/traces`.
pub fn default_trace_root() -> Result<PathBuf, LocationError> {
    if let Some(dir) = std::env::var_os(TRACE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(LocationError::NoRoot)?;
    Ok(PathBuf::from(home).join(".local/share/ttvm/traces"))
}

fn prepare_exact(dir: &Path) -> Result<(), LocationError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(LocationError::NotADirectory {
            path: dir.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = fs::read_dir(dir).map_err(|source| LocationError::List {
                path: dir.to_path_buf(),
                source,
            })?;
            if entries.next().is_some() {
                return Err(LocationError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(_) => fs::create_dir_all(dir).map_err(|source| LocationError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The `n` of a `<guest>-<n>` directory name, if `name` is one.
fn trace_number(name: &OsStr, guest_name: &str) -> Option<u64> {
    let name = name.to_str()?;
    let rest = name.strip_prefix(guest_name)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn create_numbered(root: &Path, guest_name: &str) -> Result<PathBuf, LocationError> {
    if !valid_trace_name(guest_name) {
        return Err(LocationError::BadGuestName {
            name: guest_name.to_string(),
        });
    }
    fs::create_dir_all(root).map_err(|source| LocationError::Create {
        path: root.to_path_buf(),
        source,
    })?;
    let entries = fs::read_dir(root).map_err(|source| LocationError::List {
        path: root.to_path_buf(),
        source,
    })?;
    let mut next = entries
        .flatten()
        .filter_map(|e| trace_number(&e.file_name(), guest_name))
        .max()
        .map_or(0, |n| n + 1);
    // Another recorder may race us to a number: create_dir fails, take the next one.
    let dir = loop {
        let dir = root.join(format!("{guest_name}-{next}"));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => next += 1,
            Err(source) => return Err(LocationError::Create { path: dir, source }),
        }
    };
    update_latest(root, &dir)?;
    tracing::debug!(dir = %dir.display(), "created trace directory");
    Ok(dir)
}

/// Points `<root>/latest-trace` at `dir` (relative link, replaced atomically).
pub fn update_latest(root: &Path, dir: &Path) -> Result<(), LocationError> {
    let link = root.join(LATEST_LINK);
    let target = dir.file_name().map_or(dir, Path::new);
    let tmp = root.join(format!(".{LATEST_LINK}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| fs::rename(&tmp, &link))
        .map_err(|source| {
            let _ = fs::remove_file(&tmp);
            LocationError::Link { path: link, source }
        })
}

/// Resolves the trace the user named: `None` means `<root>/latest-trace`; a path that
/// exists is used as is; otherwise a name is looked up inside `root`.
pub fn resolve_trace(root: &Path, given: Option<&Path>) -> Result<PathBuf, LocationError> {
    let Some(given) = given else {
        let link = root.join(LATEST_LINK);
        return match fs::read_link(&link) {
            Ok(target) => Ok(root.join(target)),
            Err(_) => Err(LocationError::NoLatest {
                root: root.to_path_buf(),
            }),
        };
    };
    if given.exists() {
        return Ok(given.to_path_buf());
    }
    let in_root = root.join(given);
    if given.is_relative() && in_root.exists() {
        return Ok(in_root);
    }
    Err(LocationError::NotFound {
        name: given.to_path_buf(),
        tried: vec![given.to_path_buf(), in_root],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = TraceLocation::InRoot {
            root: tmp.path().join("root"),
        };
        let a = loc.create_dir("hello").unwrap();
        let b = loc.create_dir("hello").unwrap();
        let c = loc.create_dir("hello-world").unwrap();
        assert!(a.ends_with("hello-0") && b.ends_with("hello-1") && c.ends_with("hello-world-0"));
        let root = tmp.path().join("root");
        assert_eq!(
            resolve_trace(&root, None).unwrap(),
            root.join("hello-world-0")
        );
        assert_eq!(
            resolve_trace(&root, Some(Path::new("hello-1"))).unwrap(),
            root.join("hello-1")
        );
        assert!(matches!(
            resolve_trace(&root, Some(Path::new("nope"))),
            Err(LocationError::NotFound { .. })
        ));
        assert!(loc.create_dir("../evil").is_err());
        assert!(matches!(
            loc.create_dir("-o"),
            Err(LocationError::BadGuestName { .. })
        ));
    }

    #[test]
    fn trace_names() {
        assert!(valid_trace_name("race-3"));
        assert!(valid_trace_name(&"x".repeat(255)));
        for bad in [
            "",
            ".hidden",
            "-o",
            "a/b",
            "a\0b",
            LATEST_LINK,
            &"x".repeat(256),
        ] {
            assert!(!valid_trace_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn no_latest_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_trace(tmp.path(), None).unwrap_err();
        assert!(err
            .to_string()
            .contains("no trace given and no latest-trace"));
    }

    #[test]
    fn exact_dir_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x/y");
        let loc = TraceLocation::Exact(dir.clone());
        assert_eq!(loc.create_dir("g").unwrap(), dir);
        fs::write(dir.join("f"), b"x").unwrap();
        assert!(matches!(
            loc.create_dir("g"),
            Err(LocationError::NotEmpty { .. })
        ));
    }
}
