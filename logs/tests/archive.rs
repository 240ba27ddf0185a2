//! Trace archives: byte-exact round trip (checkpoints included), and every kind of damage
//! is refused with nothing left behind.
mod common;

use common::*;
use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};
use ttvm_logs::archive::{self, ArchiveError, ImportTarget};
use ttvm_logs::*;

/// A finished trace with events and two checkpoints, in `<tmp>/src/t-1`.
fn sample_trace(tmp: &Path) -> PathBuf {
    trace_with_checkpoints(&tmp.join("src/t-1"), 500)
}

/// Every file under `dir` with its contents, by relative path.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn go(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(Result::unwrap).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                go(&e.path(), &format!("{rel}/"), out);
            } else {
                out.push((rel, fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, "", &mut out);
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn round_trip_is_byte_exact_and_lands_in_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = sample_trace(tmp.path());
    let file = tmp.path().join("t-1.ttvm");
    let out = archive::export(&trace, &file).unwrap();
    assert_eq!(out.archive_bytes, fs::metadata(&file).unwrap().len());
    assert!(out.entries >= 6, "{out:?}");
    assert_eq!(leftovers(tmp.path()).len(), 2, "no temporary file left");

    let root = tmp.path().join("root");
    let got = archive::import(&file, &ImportTarget::InRoot(root.clone())).unwrap();
    assert_eq!(got.dir, root.join("t-1"));
    assert_eq!(got.sha256, out.sha256);
    assert_eq!(contents(&got.dir), contents(&trace));
    assert_eq!(resolve_trace(&root, None).unwrap(), root.join("t-1"));
    let (events, err) = read_all(&got.dir).unwrap();
    assert!(err.is_none());
    assert_eq!(events.len(), 500 + 1);

    // Never overwritten: neither the archive nor the trace.
    assert!(matches!(
        archive::export(&trace, &file),
        Err(ArchiveError::Exists { .. })
    ));
    assert!(matches!(
        archive::import(&file, &ImportTarget::InRoot(root.clone())),
        Err(ArchiveError::Exists { .. })
    ));
    let exact = tmp.path().join("elsewhere/copy");
    fs::create_dir_all(exact.parent().unwrap()).unwrap();
    archive::import(&file, &ImportTarget::Exact(exact.clone())).unwrap();
    assert_eq!(contents(&exact), contents(&trace));
}

fn assert_refused(file: &Path, tmp: &Path, needle: &str) {
    let dest_parent = tmp.join("dest");
    fs::create_dir_all(&dest_parent).unwrap();
    let err = archive::import(file, &ImportTarget::Exact(dest_parent.join("t"))).unwrap_err();
    assert!(err.is_damaged(), "{err}");
    assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    assert!(
        leftovers(&dest_parent).is_empty(),
        "left behind: {:?}",
        leftovers(&dest_parent)
    );
}

#[test]
fn truncated_archives_are_refused_at_every_length() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = sample_trace(tmp.path());
    let file = tmp.path().join("a.ttvm");
    archive::export(&trace, &file).unwrap();
    let bytes = fs::read(&file).unwrap();
    let cut = tmp.path().join("cut.ttvm");
    // Every length in the first 300 bytes, then a spread up to one byte short.
    let lengths = (0..300)
        .chain((300..bytes.len()).step_by(97))
        .chain([bytes.len() - 1]);
    for len in lengths {
        fs::write(&cut, &bytes[..len]).unwrap();
        let needle = if len < 8 {
            "not a ttvm trace archive"
        } else {
            "is truncated"
        };
        assert_refused(&cut, tmp.path(), needle);
    }
    let mut err = String::new();
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    if let Err(e) = archive::import(&cut, &ImportTarget::Exact(tmp.path().join("x"))) {
        err = e.to_string();
    }
    // Found before a byte of it is written: its size is more than what is left.
    assert!(
        err.contains("yet events at byte") && err.contains("bytes and only"),
        "names the file cut short: {err}"
    );
}

#[test]
fn flipped_bits_and_garbage_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = sample_trace(tmp.path());
    let file = tmp.path().join("a.ttvm");
    archive::export(&trace, &file).unwrap();
    let bytes = fs::read(&file).unwrap();
    let bad = tmp.path().join("bad.ttvm");
    // A bit flipped inside file contents: only the checksum can tell.
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    fs::write(&bad, &b).unwrap();
    assert_refused(&bad, tmp.path(), "");
    // In the checksum itself.
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(&bad, &b).unwrap();
    assert_refused(&bad, tmp.path(), "checksum does not match");
    // Trailing garbage.
    let mut b = bytes.clone();
    b.extend_from_slice(b"x");
    fs::write(&bad, &b).unwrap();
    assert_refused(&bad, tmp.path(), "bytes after the checksum");
    // Not an archive at all.
    fs::write(&bad, b"#!/bin/sh\necho not an archive\n").unwrap();
    assert_refused(&bad, tmp.path(), "not a ttvm trace archive");
    // A newer format.
    let mut b = bytes.clone();
    b[8] = 9;
    fs::write(&bad, &b).unwrap();
    assert_refused(&bad, tmp.path(), "version 9 archive");
}

/// Builds an archive by hand with one file at `rel` (checksum valid).
fn handmade(name: &str, rel: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(archive::ARCHIVE_MAGIC);
    b.extend_from_slice(&archive::ARCHIVE_VERSION.to_le_bytes());
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(b'F');
    b.extend_from_slice(&(rel.len() as u16).to_le_bytes());
    b.extend_from_slice(rel.as_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"own");
    b.push(b'E');
    b.extend_from_slice(&1u64.to_le_bytes());
    let digest: [u8; 32] = sha2::Sha256::digest(&b).into();
    b.extend_from_slice(&digest);
    b
}

#[test]
fn unsafe_paths_and_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("evil.ttvm");
    for rel in ["../escape", "/etc/passwd", "a/../../b", "a//b", "./x", ""] {
        fs::write(&bad, handmade("t-1", rel)).unwrap();
        assert_refused(&bad, tmp.path(), "unsafe path");
    }
    assert!(!tmp.path().join("escape").exists());
    let too_long = "x".repeat(256);
    for name in [
        "../up",
        ".hidden",
        "latest-trace",
        "a/b",
        "-o",
        "--help",
        &too_long,
    ] {
        fs::write(&bad, handmade(name, "header.json")).unwrap();
        let err =
            archive::import(&bad, &ImportTarget::InRoot(tmp.path().join("root"))).unwrap_err();
        assert!(err.to_string().contains("unusable trace name"), "{err}");
    }
    // A well-formed archive whose content is not a trace.
    fs::write(&bad, handmade("t-1", "header.json")).unwrap();
    assert_refused(&bad, tmp.path(), "not a readable trace");
}

#[test]
fn only_traces_are_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let err = archive::export(tmp.path(), &tmp.path().join("x.ttvm")).unwrap_err();
    assert!(err.to_string().contains("not a readable trace"), "{err}");
    assert!(!tmp.path().join("x.ttvm").exists());
    let trace = sample_trace(tmp.path());
    std::os::unix::fs::symlink("/etc/passwd", trace.join("link")).unwrap();
    let err = archive::export(&trace, &tmp.path().join("y.ttvm")).unwrap_err();
    assert!(err.to_string().contains("only regular files"), "{err}");
    assert_eq!(leftovers(tmp.path()), vec!["src".to_string()]);
}

#[test]
fn a_255_byte_trace_name_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "n".repeat(255);
    let trace = sample_trace(tmp.path());
    let long = trace.with_file_name(&name);
    fs::rename(&trace, &long).unwrap();
    let file = tmp.path().join("long.ttvm");
    archive::export(&long, &file).unwrap();
    let root = tmp.path().join("root");
    let got = archive::import(&file, &ImportTarget::InRoot(root.clone())).unwrap();
    assert_eq!(got.dir, root.join(&name));
    assert_eq!(contents(&got.dir), contents(&long));
    // No temporary directory left beside it.
    let mut left = leftovers(&root);
    left.sort();
    assert_eq!(left, vec!["latest-trace".to_string(), name]);
}

#[test]
fn an_archive_that_is_not_a_regular_file_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo.ttvm");
    mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&dest).unwrap();
    let target = ImportTarget::Exact(dest.join("t"));
    std::thread::spawn(move || {
        let _ = tx.send(archive::import(&fifo, &target).map(|_| ()));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("import blocked on a FIFO")
        .unwrap_err();
    assert!(err.is_damaged(), "{err}");
    assert!(
        err.to_string().ends_with(
            "fifo.ttvm is a FIFO (named pipe), not a regular file: ttvm reads only regular files"
        ),
        "{err}"
    );
    assert!(leftovers(&dest).is_empty());
}
