//! What a file system can hold in place of a trace file: FIFOs, links to devices,
//! oversized files, and a header whose close record was edited. Every case is a typed
//! error naming the file, reached without blocking (each read runs under a timeout).
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use ttvm_logs::checkpoint::CHECKPOINT_DIR;
use ttvm_logs::header::{HEADER_FILE, MAX_HEADER_BYTES};
use ttvm_logs::report::{describe_trace, TraceStatus};
use ttvm_logs::*;

/// Puts something at a path.
type MakeFile = fn(&Path);
/// Changes a header's JSON.
type EditHeader = fn(&mut serde_json::Value);

/// Runs `f` on another thread; fails the test if it takes more than 10 s (a blocked
/// open or an endless read).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: still blocked after 10 s"))
}

/// A finished trace with two checkpoints, in `<tmp>/<name>`.
fn trace(tmp: &Path, name: &str) -> PathBuf {
    trace_with_checkpoints(&tmp.join(name), 300)
}

fn first_checkpoint(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_DIR).join("000000-100.ckpt")
}

/// Replaces `file` of the trace by what `make` puts at its path.
fn replace(file: &Path, make: impl FnOnce(&Path)) {
    std::fs::remove_file(file).unwrap();
    make(file);
}

/// Everything a reader does with a trace: open, events, image, checkpoints.
fn read_everything(dir: PathBuf) -> Result<(), String> {
    let mut r = TraceReader::open(&dir).map_err(|e| e.to_string())?;
    for e in r.events() {
        e.map_err(|e| e.to_string())?;
    }
    r.guest_image().map_err(|e| e.to_string())?;
    r.read_checkpoint(CheckpointId(0))
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn special_files_in_a_trace_are_named_errors_not_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let good = trace(tmp.path(), "good");
    read_everything(good).unwrap();
    let kinds: [(&str, MakeFile); 2] = [
        ("a FIFO (named pipe)", mkfifo),
        ("a character device", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
    ];
    for (n, (kind, make)) in kinds.into_iter().enumerate() {
        for file in [
            HEADER_FILE,
            EVENTS_FILE,
            INDEX_FILE,
            GUEST_IMAGE_FILE,
            "ckpt",
        ] {
            let dir = trace(tmp.path(), &format!("t{n}-{file}"));
            let path = match file {
                "ckpt" => first_checkpoint(&dir),
                f => dir.join(f),
            };
            replace(&path, make);
            let err =
                within(file, move || read_everything(dir)).expect_err("a special file was read");
            let expected = format!("{} is {kind}, not a regular file", path.display());
            assert!(err.contains(&expected), "{expected:?} not in: {err}");
        }
    }
}

#[test]
fn oversized_files_are_refused_by_their_format_limit() {
    let tmp = tempfile::tempdir().unwrap();
    // A header just over the limit (valid JSON padded with spaces).
    let dir = trace(tmp.path(), "header");
    let path = dir.join(HEADER_FILE);
    let mut text = std::fs::read(&path).unwrap();
    text.resize(MAX_HEADER_BYTES as usize + 1, b' ');
    std::fs::write(&path, &text).unwrap();
    let err = TraceReader::open(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read the trace header: {} is {} bytes, more than a trace header can be ({MAX_HEADER_BYTES} bytes at most)",
            path.display(),
            MAX_HEADER_BYTES + 1
        )
    );

    // A checkpoint larger than any snapshot of a 64 MiB machine (sparse: costs nothing).
    let dir = trace(tmp.path(), "ckpt");
    let ckpt = first_checkpoint(&dir);
    let f = std::fs::OpenOptions::new().write(true).open(&ckpt).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = TraceReader::open(&dir)
        .unwrap()
        .read_checkpoint(CheckpointId(0))
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{} is 1073741824 bytes, more than a checkpoint of this trace's machine can be",
            ckpt.display()
        )),
        "{err}"
    );

    // A checkpoint whose (checksummed) header claims more than the machine's memory.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"TTVMCKPT");
    bytes.extend_from_slice(&100u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let payload = zstd::bulk::compress(&[0u8; 64], 3).unwrap();
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(&ckpt, &bytes).unwrap();
    let err = TraceReader::open(&dir)
        .unwrap()
        .read_checkpoint(CheckpointId(0))
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "it claims 1099511627776 bytes, more than a snapshot of this machine can hold"
        ),
        "{err}"
    );

    // An index far longer than the events file justifies: only its useful part is read,
    // and the trace reads as before (the index is a hint).
    let dir = trace(tmp.path(), "index");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(INDEX_FILE))
        .unwrap();
    f.set_len(1 << 40).unwrap();
    let (events, err) = within("big index", move || read_all(&dir).unwrap());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.len(), 301);
}

/// Edits the header of `dir` as JSON.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(HEADER_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_close_record_is_damage_reported_after_the_events() {
    let tmp = tempfile::tempdir().unwrap();
    let end_event = "the stream's end event (#300 at position 12000)";
    let cases: [(&str, EditHeader, String); 4] = [
        (
            "status",
            |v| v["close"]["end_reason"]["status"] = 7.into(),
            format!("it says the run ended with \"guest exit (status 7)\", {end_event} says \"guest exit (status 0)\""),
        ),
        (
            "final",
            |v| v["close"]["final_position"] = 99.into(),
            "it says the final position is 99, the stream's end event (#300) is at position 12000"
                .to_string(),
        ),
        (
            "chunks",
            |v| v["close"]["chunk_count"] = 1.into(),
            "it says 1 chunks, the events file holds".to_string(),
        ),
        (
            "kinds",
            |v| v["close"]["events_by_kind"]["interrupt"] = 1000.into(),
            "its events by kind add up to".to_string(),
        ),
    ];
    for (name, edit, detail) in cases {
        let dir = trace(tmp.path(), name);
        edit_header(&dir, edit);
        // Every event is still there, then the damage instead of a clean end.
        let (events, err) = read_all(&dir).unwrap();
        assert_eq!(events.len(), 301, "{name}");
        let err = err.unwrap_or_else(|| panic!("{name}: the edit went unnoticed"));
        let expected = format!(
            "the close record in {} does not match the event stream: {detail}",
            dir.join(HEADER_FILE).display()
        );
        assert!(err.to_string().starts_with(&expected), "{name}: {err}");
        assert!(err.to_string().ends_with("; the trace is damaged"), "{err}");
        assert!(err.ends_early().is_none());
        let r = TraceReader::open(&dir).unwrap();
        assert!(r.check_close().is_err(), "{name}");
        let row = describe_trace(&dir);
        assert_eq!(row.status, TraceStatus::Damaged, "{name}");
        assert!(row.error.unwrap().starts_with(&expected), "{name}");
    }
    // Untouched, it reads cleanly.
    let dir = trace(tmp.path(), "intact");
    assert!(read_all(&dir).unwrap().1.is_none());
    assert!(TraceReader::open(&dir).unwrap().check_close().is_ok());
}

#[test]
fn format_version_zero_is_refused_with_the_supported_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = trace(tmp.path(), "v0");
    edit_header(&dir, |v| v["format_version"] = 0.into());
    let err = TraceReader::open(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt trace header {}: format_version 0 with compat_version 2 is not a trace format (this ttvm reads formats 1 to 2)",
            dir.join(HEADER_FILE).display()
        )
    );
}

#[test]
fn a_trace_path_that_is_not_a_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let err = within("fifo dir", move || TraceReader::open(&fifo).unwrap_err());
    assert!(
        err.to_string()
            .ends_with("is a FIFO (named pipe), not a directory"),
        "{err}"
    );
}
