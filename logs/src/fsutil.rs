//! Small file-system helpers shared by the writer, checkpoints and locations.
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary sibling is written, fsynced and
/// renamed over `path`, then the directory is fsynced. Readers see the old or the new
/// contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ));
    }
    let tmp = temp_sibling(path, "tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Longest part of a file name kept in a temporary sibling's name, so that the sibling
/// of any valid name (up to 255 bytes) is itself a valid name.
const TEMP_NAME_KEEP: usize = 200;

/// A sibling of `path` for temporary contents: `.<name>.<tag>-<pid>`, with `<name>`
/// shortened (at a character boundary) to keep the whole under the 255-byte name limit.
pub fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "temp".into(), |n| n.to_string_lossy().into_owned());
    let mut keep = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    path.with_file_name(format!(".{}.{tag}-{}", &name[..keep], std::process::id()))
}

/// fsyncs a directory so renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Total size in bytes of the regular files under `dir` (recursively, not following
/// symlinks); unreadable entries count as 0.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_siblings_of_long_names_are_valid_names() {
        let long = "é".repeat(127) + "x"; // 255 bytes
        let tmp = temp_sibling(&Path::new("/r").join(&long), "import");
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(
            name.starts_with(".éé") && name.contains(".import-"),
            "{name}"
        );
        assert_eq!(
            temp_sibling(Path::new("/r/t-1"), "tmp"),
            PathBuf::from(format!("/r/.t-1.tmp-{}", std::process::id()))
        );
    }
}
