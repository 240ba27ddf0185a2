//! What a file system can hold in place of a trace's files, on the real binary: FIFOs,
//! links to /dev/zero, oversized files and an edited close record. Every command ends
//! (60 s at most, under a 1 GiB address-space limit) with an error naming the file and
//! its documented exit code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const DAMAGED: i32 = 3;
const TTVM_ERROR: i32 = 120;
/// The timer guest exits with status 10.
const TIMER_STATUS: i32 = 10;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Records the timer guest (a checkpoint every 1000 steps) into `<root>/<name>`.
fn record(root: &Path, name: &str) -> PathBuf {
    let trace = root.join(name);
    let o = run(&[
        "record",
        "-o",
        s(&trace),
        "--checkpoint-every",
        "1000",
        s(&guest("timer")),
    ]);
    assert_eq!(o.status.code(), Some(TIMER_STATUS), "{}", stderr(&o));
    trace
}

/// A copy of `trace` named `name` beside it.
fn copy(trace: &Path, name: &str) -> PathBuf {
    let dst = trace.with_file_name(name);
    let o = std::process::Command::new("cp")
        .args(["-a", s(trace), s(&dst)])
        .output()
        .unwrap();
    assert!(o.status.success(), "cp: {}", stderr(&o));
    dst
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn link_to_dev_zero(path: &Path) {
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
}

/// The checkpoint file `--goto 3500` restores (the one at position 3000).
fn checkpoint(trace: &Path) -> PathBuf {
    let path = trace.join("checkpoints/000002-3000.ckpt");
    assert!(path.exists(), "{} missing", path.display());
    path
}

fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn dump(trace: &Path) -> Output {
    run_bounded(None, &["dump", s(trace)])
}

fn verify(trace: &Path) -> Output {
    run_bounded(None, &["replay", "--verify", s(trace)])
}

fn goto(trace: &Path) -> Output {
    run_bounded(None, &["replay", s(trace), "--goto", "3500"])
}

/// Replaces `file` of `bad` by what `make` puts at its path (`kind` of file), and checks
/// that dump (3), replay --verify and --goto (120) name it.
fn assert_refused_everywhere(bad: &Path, file: &str, kind: &str, make: fn(&Path)) {
    std::fs::remove_file(bad.join(file)).unwrap();
    make(&bad.join(file));
    let needle = format!("{} is {kind}, not a regular file", bad.join(file).display());
    assert_fails(&dump(bad), DAMAGED, &needle);
    assert_fails(&verify(bad), TTVM_ERROR, &needle);
    assert_fails(&goto(bad), TTVM_ERROR, &needle);
}

#[test]
fn a_fifo_in_a_trace_is_named_and_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = record(root, "good");
    for file in ["events", "header.json", "events.idx"] {
        let bad = copy(&good, &format!("fifo-{file}"));
        assert_refused_everywhere(&bad, file, "a FIFO (named pipe)", mkfifo);
    }
    // `ls` lists every other trace and marks the bad ones.
    let o = run_bounded(Some(root), &["ls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    let status = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed: {text}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("good"), "complete", "{text}");
    for file in ["events", "header.json", "events.idx"] {
        assert_eq!(status(&format!("fifo-{file}")), "damaged", "{text}");
    }
    assert!(
        text.contains("error: ") && text.contains("is a FIFO (named pipe)"),
        "{text}"
    );

    // The guest image: replaying needs it, dumping does not.
    let bad = copy(&good, "fifo-image");
    std::fs::remove_file(bad.join("guest.zst")).unwrap();
    mkfifo(&bad.join("guest.zst"));
    let needle = "guest.zst is a FIFO (named pipe), not a regular file";
    assert_fails(&verify(&bad), TTVM_ERROR, needle);
    assert_fails(&goto(&bad), TTVM_ERROR, needle);
    assert_eq!(dump(&bad).status.code(), Some(0));

    // A checkpoint: --goto warns once and replays from an earlier point.
    goto_past_a_bad_checkpoint(
        &copy(&good, "fifo-checkpoint"),
        "a FIFO (named pipe)",
        mkfifo,
    );
}

/// Replaces the checkpoint `--goto 3500` restores by what `make` puts there (`kind` of
/// file): the seek still arrives, warning once about that file.
fn goto_past_a_bad_checkpoint(bad: &Path, kind: &str, make: fn(&Path)) {
    let ckpt = checkpoint(bad);
    std::fs::remove_file(&ckpt).unwrap();
    make(&ckpt);
    let o = goto(bad);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("position 3500\n"), "{}", stdout(&o));
    let err = stderr(&o);
    let warning = format!(
        "is unusable ({} is {kind}, not a regular file",
        ckpt.display()
    );
    assert_eq!(err.matches(&warning).count(), 1, "warned once: {err}");
}

#[test]
fn links_to_dev_zero_are_refused_within_a_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let good = record(tmp.path(), "good");
    for file in ["header.json", "events.idx"] {
        let bad = copy(&good, &format!("zero-{file}"));
        assert_refused_everywhere(&bad, file, "a character device", link_to_dev_zero);
    }
    goto_past_a_bad_checkpoint(
        &copy(&good, "zero-checkpoint"),
        "a character device",
        link_to_dev_zero,
    );
    // The guest image on the command line.
    let o = run_bounded(None, &["run", "/dev/zero"]);
    assert_fails(
        &o,
        TTVM_ERROR,
        "cannot read the guest image: /dev/zero is a character device, not a regular file",
    );
    let fifo = tmp.path().join("guest.elf");
    mkfifo(&fifo);
    for cmd in ["run", "record"] {
        let o = run_bounded(Some(tmp.path()), &[cmd, s(&fifo)]);
        assert_fails(&o, TTVM_ERROR, "guest.elf is a FIFO (named pipe)");
    }
}

#[test]
fn an_oversized_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = record(tmp.path(), "big");
    let header = trace.join("header.json");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&header)
        .unwrap();
    f.set_len(64 << 30).unwrap(); // sparse: costs no disk
    let needle = format!(
        "{} is 68719476736 bytes, more than a trace header can be (1048576 bytes at most)",
        header.display()
    );
    assert_fails(&dump(&trace), DAMAGED, &needle);
    assert_fails(&verify(&trace), TTVM_ERROR, &needle);
}

/// Edits `trace`'s header.json as JSON.
fn edit_header(trace: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = trace.join("header.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_close_record_is_damage_not_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let good = record(tmp.path(), "good");
    let o = run_bounded(None, &["dump", s(&good), "--json"]);
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    let end = summary["final_position"].as_u64().unwrap();
    let events = summary["events"].as_u64().unwrap();
    let last = events - 1;

    let status = copy(&good, "status");
    edit_header(&status, |v| v["close"]["end_reason"]["status"] = 7.into());
    let final_pos = copy(&good, "final");
    edit_header(&final_pos, |v| {
        v["close"]["final_position"] = (end + 5).into()
    });
    let cases = [
        (
            &status,
            format!("it says the run ended with \"guest exit (status 7)\", the stream's end event (#{last} at position {end}) says \"guest exit (status 10)\""),
        ),
        (
            &final_pos,
            format!(
                "it says the final position is {}, the stream's end event (#{last}) is at position {end}",
                end + 5
            ),
        ),
    ];
    for (trace, detail) in cases {
        let needle = format!(
            "the close record in {} does not match the event stream: {detail}; the trace is damaged",
            trace.join("header.json").display()
        );
        // dump: every event, then the damage (exit 3), and no summary line with the
        // edited figures.
        let o = run_bounded(None, &["dump", s(trace), "--json"]);
        assert_fails(&o, DAMAGED, &needle);
        assert_eq!(stdout(&o).lines().count() as u64, events, "{}", stdout(&o));
        assert!(!stdout(&o).contains("\"summary\""), "{}", stdout(&o));
        // replay refuses it before running anything.
        let o = verify(trace);
        assert_fails(&o, TTVM_ERROR, &needle);
        assert!(!stdout(&o).contains("verified"), "{}", stdout(&o));
        assert_fails(&goto(trace), TTVM_ERROR, &needle);
    }
    let o = run_bounded(Some(tmp.path()), &["ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for row in rows.as_array().unwrap() {
        let expected = if row["name"] == "good" {
            "complete"
        } else {
            "damaged"
        };
        assert_eq!(row["status"], expected, "{row}");
    }

    // Format version 0 names the versions this ttvm reads.
    let v0 = copy(&good, "v0");
    edit_header(&v0, |v| v["format_version"] = 0.into());
    assert_fails(
        &dump(&v0),
        DAMAGED,
        "format_version 0 with compat_version 2 is not a trace format (this ttvm reads formats 1 to 2)",
    );
}

#[test]
fn a_trace_without_its_final_digest_is_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let good = record(tmp.path(), "good");
    let bad = tmp.path().join("no-digest");
    // The header stays consistent (the writer counts what it writes): only the replay,
    // which checks the final state against that digest, can tell.
    rewritten_copy(&good, &bad, |_, rec| {
        (!matches!(rec.event, ttvm_logs::Event::StateDigest { .. })).then_some(rec)
    });
    assert_eq!(dump(&bad).status.code(), Some(0));
    let o = verify(&bad);
    assert_fails(
        &o,
        TTVM_ERROR,
        "the trace is damaged: its end event (#13 at position ",
    );
    assert_fails(
        &o,
        TTVM_ERROR,
        "is not preceded by the final state digest every recording writes",
    );
    assert!(!stdout(&o).contains("verified"), "{}", stdout(&o));
}
