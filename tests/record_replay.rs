//! `ttvm record` then `ttvm replay`, on real KVM with the test guests: replays are exact,
//! recordings of nondeterministic guests differ, tampering and truncation are caught.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ttvm_logs::{Event, TraceReader};

struct Recorded {
    dir: PathBuf,
    serial: Vec<u8>,
    status: Option<i32>,
}

/// Records `guest` into `<tmp>/<name>` with `extra` options; serial output to a file.
fn record(tmp: &Path, name: &str, guest_name: &str, extra: &[&str]) -> Recorded {
    let dir = tmp.join(name);
    let serial = tmp.join(format!("{name}.serial"));
    let g = guest(guest_name);
    let mut args = vec![
        "record",
        "-o",
        dir.to_str().unwrap(),
        "--serial-out",
        serial.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(g.to_str().unwrap());
    let o = run(&args);
    assert!(
        stderr(&o).contains(&format!("ttvm: trace: {}", dir.display())),
        "{}",
        stderr(&o)
    );
    Recorded {
        dir,
        serial: std::fs::read(&serial).unwrap(),
        status: o.status.code(),
    }
}

struct Replayed {
    serial: Vec<u8>,
    status: Option<i32>,
    json: serde_json::Value,
}

fn replay(tmp: &Path, trace: &Path, tag: &str) -> Replayed {
    let serial = tmp.join(format!("replay-{tag}.serial"));
    let o = ttvm()
        .args([
            "replay",
            "--json",
            "--serial-out",
            serial.to_str().unwrap(),
            trace.to_str().unwrap(),
        ])
        // Replay must not read input: give it something else to make sure.
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(&o), stderr(&o)));
    Replayed {
        serial: std::fs::read(&serial).unwrap_or_default(),
        status: o.status.code(),
        json,
    }
}

/// Final position (from the header) and final digest (the last StateDigest) of a trace.
fn recorded_final(trace: &Path) -> (u64, String) {
    let mut reader = TraceReader::open(trace).unwrap();
    let position = reader.header().close.as_ref().unwrap().final_position;
    let mut digest = None;
    for rec in reader.events() {
        if let Event::StateDigest { digest: d } = rec.unwrap().event {
            digest = Some(d);
        }
    }
    (position, format!("{:#018x}", digest.unwrap()))
}

fn assert_replays_exactly(tmp: &Path, rec: &Recorded, times: usize) {
    let (position, digest) = recorded_final(&rec.dir);
    for i in 0..times {
        let r = replay(tmp, &rec.dir, &i.to_string());
        assert_eq!(r.json["result"], "reproduced", "{}", r.json);
        assert_eq!(r.serial, rec.serial, "serial output of replay {i}");
        assert_eq!(r.status, rec.status, "exit status of replay {i}");
        assert_eq!(r.json["position"], position, "final position of replay {i}");
        assert_eq!(
            r.json["final_digest"],
            digest.as_str(),
            "final digest of replay {i}"
        );
    }
}

#[test]
fn every_guest_replays_three_times_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, "some input\nfor echo\n").unwrap();
    let cases: [(&str, &[&str], i32); 8] = [
        ("hello", &["--cmdline", "x=1"], 0),
        ("timer", &[], 10),
        ("rtc", &[], 0),
        ("hello32", &[], 0),
        ("entropy", &[], 0),
        ("crash", &[], 121),
        ("race", &[], -1),
        ("echo", &["--serial-in", input.to_str().unwrap()], 0),
    ];
    for (name, extra, status) in cases {
        let rec = record(tmp.path(), name, name, extra);
        if status >= 0 {
            assert_eq!(rec.status, Some(status), "{name}");
        }
        assert!(!rec.serial.is_empty(), "{name}");
        assert_replays_exactly(tmp.path(), &rec, 3);
    }
}

/// The `+<ticks>` delta each of `cases` printed (`CASE: +N` lines), asserting each is below
/// `limit`: a read the recording saw is a few steps of virtual time, the host's TSC is not.
fn assert_small_deltas(text: &str, cases: &[&str], limit: u64) {
    for what in cases {
        let delta: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what}: +")))
            .unwrap_or_else(|| panic!("no {what} line in {text}"))
            .parse()
            .unwrap();
        assert!(delta < limit, "{what}: +{delta}");
    }
}

/// Seeks twice to right after each of the first `count` time-stamp reads of `rec`: the
/// registers must agree.
fn assert_seeks_after_reads_agree(rec: &Recorded, count: usize) {
    let mut reader = TraceReader::open(&rec.dir).unwrap();
    let reads: Vec<u64> = reader
        .events()
        .filter_map(Result::ok)
        .filter(|r| matches!(r.event, Event::Rdtsc { .. }))
        .map(|r| r.position)
        .collect();
    assert!(reads.len() >= count, "{} time-stamp reads", reads.len());
    for &position in &reads[..count] {
        let seek = |tag| {
            let o = run(&[
                "replay",
                "--goto",
                &(position + 1).to_string(),
                "--json",
                rec.dir.to_str().unwrap(),
            ]);
            let json: serde_json::Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|e| panic!("{tag} {e}: {}", stderr(&o)));
            json["registers"].clone()
        };
        assert_eq!(seek("first"), seek("second"), "position {}", position + 1);
    }
}

/// Time-stamp reads inside exception handlers (#DE, #BP, #UD, #GP, #PF): every read is seen
/// (on KVMs that single-step with the trap flag the VMM delivers INT3/UD2 itself and, where
/// hardware breakpoints work, the loop stops at each handler's entry), the replays agree,
/// and seeking twice to each read gives the same registers.
#[test]
fn time_stamp_reads_in_exception_handlers_are_seen_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "faults", "faults", &[]);
    assert_eq!(rec.status, Some(0));
    let text = String::from_utf8_lossy(&rec.serial).into_owned();
    assert!(text.ends_with("faults: ok\n"), "{text}");
    assert_small_deltas(&text, &["#DE", "#BP", "#UD", "#PF"], 100_000);
    assert_replays_exactly(tmp.path(), &rec, 2);
    assert_seeks_after_reads_agree(&rec, 10);
}

/// Time-stamp reads right after instructions some KVMs merge with the next one in a single
/// step (`lfence; rdtsc` on kvm_pvm): every read is seen and emulated (deltas of a few
/// steps of virtual time, not the host TSC), the replays agree, and seeking twice to a
/// position right after each read gives the same registers.
#[test]
fn time_stamp_reads_after_fences_are_seen_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "fences", "fences", &[]);
    assert_eq!(rec.status, Some(0));
    let text = String::from_utf8_lossy(&rec.serial).into_owned();
    assert!(text.ends_with("fences: ok\n"), "{text}");
    // A few single steps of 100 guest ns at 1 GHz; the host TSC would be far ahead.
    assert_small_deltas(
        &text,
        &["lfence;rdtsc", "mfence;rdtsc", "sfence;rdtsc"],
        10_000,
    );
    assert_replays_exactly(tmp.path(), &rec, 2);
    assert_seeks_after_reads_agree(&rec, 6);
}

#[test]
fn recordings_of_entropy_differ_and_each_replays_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let a = record(tmp.path(), "a", "entropy", &[]);
    let b = record(tmp.path(), "b", "entropy", &[]);
    assert_ne!(
        a.serial, b.serial,
        "two recordings saw the same TSC and RDRAND values"
    );
    assert_replays_exactly(tmp.path(), &a, 1);
    assert_replays_exactly(tmp.path(), &b, 1);
}

#[test]
fn echo_input_is_in_the_trace_with_its_positions() {
    let tmp = tempfile::tempdir().unwrap();
    // From a file.
    let input = tmp.path().join("input");
    std::fs::write(&input, "abc\ndef\n").unwrap();
    let from_file = record(
        tmp.path(),
        "file",
        "echo",
        &["--serial-in", input.to_str().unwrap()],
    );
    // From a pipe, arriving in pieces while the guest runs.
    let dir = tmp.path().join("pipe");
    let mut child = ttvm()
        .args(["record", "--serial-in", "-", "-o", dir.to_str().unwrap()])
        .arg(guest("echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"abc\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"def\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let from_pipe = Recorded {
        dir,
        serial: out.stdout,
        status: out.status.code(),
    };
    for rec in [&from_file, &from_pipe] {
        assert_eq!(rec.serial, b"echo: ready\nABC\nDEF\necho: 8 bytes\n");
        let mut reader = TraceReader::open(&rec.dir).unwrap();
        let mut got = Vec::new();
        let mut positions = Vec::new();
        let mut hangup = false;
        for r in reader.events() {
            let r = r.unwrap();
            match r.event {
                Event::SerialInput { bytes } => {
                    got.extend(bytes);
                    positions.push(r.position);
                }
                Event::SerialHangup => hangup = true,
                _ => {}
            }
        }
        assert_eq!(got, b"abc\ndef\n");
        assert!(hangup, "the end of input is recorded");
        assert!(positions.windows(2).all(|w| w[0] <= w[1]));
        // Replay needs no input source.
        assert_replays_exactly(tmp.path(), rec, 1);
    }
    assert_eq!(from_pipe.status, Some(0));
}

/// Copies `src` to a new trace at `dst` with `edit` applied to the events.
fn assert_diverges(trace: &Path, needle: &str) {
    let o = run(&["replay", "--quiet", trace.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("replay diverged at"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tampered_value_is_a_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "entropy", "entropy", &[]);
    let bad = tmp.path().join("bad-value");
    tampered_copy(&rec.dir, &bad, |_, r| {
        if let Event::Rdtsc { value } = &mut r.event {
            *value ^= 0x1000;
        }
    });
    // The guest computes with the changed value: caught by the next register snapshot,
    // with a diff of the registers that differ.
    assert_diverges(&bad, "register diff (recorded vs replayed)");
}

#[test]
fn tampered_position_is_a_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "timer", "timer", &[]);
    let bad = tmp.path().join("bad-position");
    let mut reader = TraceReader::open(&rec.dir).unwrap();
    let first_irq = reader
        .events()
        .map(Result::unwrap)
        .position(|r| matches!(r.event, Event::Interrupt { .. }))
        .unwrap() as u64;
    tampered_copy(&rec.dir, &bad, |i, r| {
        if i == first_irq {
            r.position += 3;
        }
    });
    assert_diverges(&bad, &format!("event #{first_irq}"));
}

#[test]
fn killed_recording_replays_up_to_its_last_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttvm"))
        .args(["record", "--serial-in", "-", "-o", dir.to_str().unwrap()])
        .arg(guest("echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first line\n").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("FIRST LINE\n") && Instant::now() < deadline {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert_eq!(seen, "echo: ready\nFIRST LINE\n");
    // The recorder flushes at least every 100 ms: wait, then kill it mid-recording.
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    let o = run(&["replay", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(119), "{}", stderr(&o));
    assert_eq!(stdout(&o), "echo: ready\nFIRST LINE\n");
    assert!(
        stderr(&o).contains("trace ends early after event"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn replay_refuses_a_trace_from_another_kvm_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "hello", "hello", &[]);
    let header = rec.dir.join("header.json");
    let text = std::fs::read_to_string(&header).unwrap();
    let here = ttvm_vmm::host::kvm::kvm_module();
    let other = if here == "kvm_amd" {
        "kvm_intel"
    } else {
        "kvm_amd"
    };
    let edited = text.replace(
        &format!("\"kvm_module\": \"{here}\""),
        &format!("\"kvm_module\": \"{other}\""),
    );
    assert_ne!(text, edited, "header has the kvm_module parameter");
    std::fs::write(&header, edited).unwrap();
    let o = run(&["replay", rec.dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("recorded on {other} and this host runs {here}")),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "", "nothing replayed");
}

#[test]
fn replay_defaults_to_the_latest_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("traces");
    let o = ttvm()
        .env("TTVM_TRACE_DIR", &root)
        .args(["record", guest("timer").to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    let o = ttvm()
        .env("TTVM_TRACE_DIR", &root)
        .args(["replay", "--verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("replay verified: guest exited with status 10"),
        "{}",
        stdout(&o)
    );
}

/// Rewrites a trace's header as format 1 wrote it: versions 1, every clock parameter a
/// string in a flat map.
fn downgrade_to_format_1(trace: &Path) {
    let path = trace.join("header.json");
    let mut header: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    header["format_version"] = 1.into();
    header["compat_version"] = 1.into();
    let typed = header["clock"]["params"].as_object().unwrap().clone();
    let mut flat = serde_json::Map::new();
    for (key, value) in typed {
        let text = match (key.as_str(), value) {
            ("step_merges", serde_json::Value::Array(names)) => names
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(","),
            ("chaos", chaos) => {
                flat.insert("chaos_seed".into(), chaos["seed"].to_string().into());
                chaos["perturbed"].as_str().unwrap().to_string()
            }
            (_, serde_json::Value::String(s)) => s,
            (_, other) => other.to_string(),
        };
        flat.insert(key, text.into());
    }
    header["clock"]["params"] = flat.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&header).unwrap()).unwrap();
}

#[test]
fn a_trace_written_in_format_1_still_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = record(tmp.path(), "timer", "timer", &[]);
    downgrade_to_format_1(&rec.dir);
    let text = std::fs::read_to_string(rec.dir.join("header.json")).unwrap();
    assert!(text.contains("\"ns_per_step\": \"100\""), "{text}");
    assert_replays_exactly(tmp.path(), &rec, 1);

    // A format-1 header whose clock cannot be read is refused with the reason.
    let edited = text.replace("\"ns_per_step\": \"100\"", "\"ns_per_step\": \"fast\"");
    std::fs::write(rec.dir.join("header.json"), edited).unwrap();
    let o = run(&["replay", rec.dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "(format 1, from an older ttvm): the clock parameter \"ns_per_step\" is not a number"
        ),
        "{}",
        stderr(&o)
    );
}
