//! CI crash repro on real KVM: `record --chaos --until-fail` finds the `race` guest's bug
//! and keeps a trace that replays the same failure every time; a passing guest keeps
//! nothing; trace archives round-trip and damaged ones are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::Value;

const FAILURE_KEPT: i32 = 117;
const NO_FAILURE: i32 = 118;

/// Runs `ttvm ARGS` with `$TTVM_TRACE_DIR` = `root` and no standard input.
fn run_in(root: &Path, args: &[&str]) -> Output {
    ttvm()
        .env("TTVM_TRACE_DIR", root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ttvm")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", stdout(o), stderr(o)))
}

/// Names in `dir` (sorted), `[]` if it does not exist.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Replays `trace` with its serial output in `out`; returns the JSON verdict.
fn replay(trace: &Path, out: &Path) -> (Value, Option<i32>) {
    let o = run(&[
        "replay",
        "--json",
        "--serial-out",
        s(out),
        trace.to_str().unwrap(),
    ]);
    (json(&o), o.status.code())
}

#[test]
fn race_chaos_until_fail_keeps_a_failure_that_replays_five_times_out_of_five() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("traces");
    let serial = tmp.path().join("failing.serial");
    let race = guest("race");
    // Seeds 1..=50: fixed, so the runs (and the one that fails) are the same every time.
    let o = run_in(
        &root,
        &[
            "record",
            "--chaos",
            "--seed",
            "1",
            "--until-fail",
            "50",
            "--json",
            "--serial-out",
            s(&serial),
            s(&race),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(FAILURE_KEPT), "{err}");
    let summary = json(&o);
    assert_eq!(summary["result"], "failure", "{summary:#}");
    let runs = summary["runs"].as_u64().unwrap();
    assert!((1..=50).contains(&runs));
    let seeds: Vec<u64> = (1..=runs).collect();
    assert_eq!(summary["seeds"], serde_json::json!(seeds));
    let failure = &summary["failure"];
    assert_eq!(failure["run"], runs);
    assert_eq!(
        failure["exit_code"], 3,
        "race exits 3 when it finds corruption"
    );
    let seed = failure["seed"].as_u64().unwrap();
    let position = failure["position"].as_u64().unwrap();
    let output = std::fs::read_to_string(&serial).unwrap();
    assert!(output.contains("PANIC: race: "), "{output}");
    eprintln!("race: failure found at run {runs} (seed {seed}), position {position}");

    // Only the failing trace is kept; latest-trace points at it.
    let trace = PathBuf::from(summary["trace"].as_str().unwrap());
    assert_eq!(trace.parent(), Some(root.as_path()));
    let name = trace.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(names(&root), vec!["latest-trace".to_string(), name]);
    let header: Value =
        serde_json::from_slice(&std::fs::read(trace.join("header.json")).unwrap()).unwrap();
    assert_eq!(header["clock"]["params"]["chaos"]["seed"], seed);
    assert!(
        err.contains(&format!("ttvm replay {}", trace.display())),
        "{err}"
    );
    assert!(err.contains(&format!("--chaos --seed {seed} ")), "{err}");
    assert_eq!(
        summary["commands"]["replay"],
        format!("ttvm replay {}", trace.display())
    );

    // Five replays: the same failure, at the same position, with the same output.
    let mut digests = Vec::new();
    for i in 0..5 {
        let out = tmp.path().join(format!("replay-{i}.serial"));
        let (verdict, code) = replay(&trace, &out);
        assert_eq!(verdict["result"], "reproduced", "replay {i}: {verdict}");
        assert_eq!(code, Some(3), "replay {i}");
        assert_eq!(verdict["position"], position, "replay {i}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), output, "replay {i}");
        digests.push(verdict["final_digest"].clone());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");

    // The seed alone records the same run again.
    let again = tmp.path().join("again");
    let o = run(&[
        "record",
        "--chaos",
        "--seed",
        &seed.to_string(),
        "-o",
        s(&again),
        "--serial-out",
        s(&tmp.path().join("again.serial")),
        s(&race),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let (verdict, _) = replay(&again, &tmp.path().join("again-replay.serial"));
    assert_eq!(verdict["position"], position);
    assert_eq!(verdict["final_digest"], digests[0]);
}

#[test]
fn a_passing_guest_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("traces");
    let hello = guest("hello");
    // An earlier trace, which latest-trace must still point at afterwards.
    let o = run_in(&root, &["record", "--serial-out", "/dev/null", s(&hello)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run_in(&root, &["record", "--until-fail", "3", "--json", s(&hello)]);
    assert_eq!(o.status.code(), Some(NO_FAILURE), "{}", stderr(&o));
    let summary = json(&o);
    assert_eq!(summary["result"], "no_failure");
    assert_eq!(summary["runs"], 3);
    assert_eq!(summary["chaos"], false);
    assert!(summary["trace"].is_null() && summary["failure"].is_null());
    assert_eq!(names(&root), vec!["hello-0", "latest-trace"]);
    assert_eq!(
        std::fs::read_link(root.join("latest-trace")).unwrap(),
        Path::new("hello-0")
    );
    assert!(
        stderr(&o).contains("no failure in 3 run(s); every trace was deleted"),
        "{}",
        stderr(&o)
    );

    // With chaos, into an exact directory: nothing is left there either.
    let dir = tmp.path().join("exact");
    let o = run(&[
        "record",
        "--chaos",
        "--seed",
        "7",
        "--until-fail",
        "3",
        "-o",
        s(&dir),
        s(&hello),
    ]);
    assert_eq!(o.status.code(), Some(NO_FAILURE), "{}", stderr(&o));
    assert!(!dir.exists());
    assert!(stderr(&o).contains("(chaos seeds 7..=9)"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "passing runs' output is not shown");
}

#[test]
fn fail_on_catches_a_clean_exit_with_bad_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kept");
    let o = run(&[
        "record",
        "--until-fail",
        "3",
        "--fail-on",
        r"^cmdline: .*bug=\d+",
        "--cmdline",
        "bug=42",
        "-o",
        s(&dir),
        s(&guest("hello")),
    ]);
    assert_eq!(o.status.code(), Some(FAILURE_KEPT), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(r#"serial output matched --fail-on: "cmdline: bug=42""#),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).starts_with("hello from ttvm\n"),
        "{}",
        stdout(&o)
    );
    assert!(dir.join("header.json").exists());
    // Usage errors.
    let o = run(&["record", "--until-fail", "2", "--fail-on", "(", "x.elf"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["record", "--seed", "3", "x.elf"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn archives_round_trip_and_damaged_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path().join("ci");
    let o = run_in(
        &here,
        &["record", "--serial-out", "/dev/null", s(&guest("timer"))],
    );
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    let file = tmp.path().join("timer.ttvm");
    let o = run_in(&here, &["export", "-o", s(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), file.to_str().unwrap());
    // Never overwritten.
    let o = run_in(&here, &["export", "timer-0", "-o", s(&file)]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );

    // Another machine: import into its trace root, replay the latest trace.
    let there = tmp.path().join("laptop");
    let o = run_in(&there, &["import", s(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), there.join("timer-0").to_str().unwrap());
    for f in [
        "header.json",
        "events",
        "events.idx",
        "guest.zst",
        "complete",
    ] {
        assert_eq!(
            std::fs::read(there.join("timer-0").join(f)).unwrap(),
            std::fs::read(here.join("timer-0").join(f)).unwrap(),
            "{f}"
        );
    }
    let o = run_in(&there, &["replay", "--verify"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("replay verified"), "{}", stdout(&o));
    let o = run_in(&there, &["import", s(&file)]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );

    // A truncated archive: a clear error, exit 3, nothing written.
    let bytes = std::fs::read(&file).unwrap();
    let cut = tmp.path().join("cut.ttvm");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    let o = run_in(&elsewhere, &["import", s(&cut)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("is truncated: it ends at byte"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(names(&elsewhere).is_empty(), "{:?}", names(&elsewhere));
    let o = run(&["import", s(&cut), "-o", s(&tmp.path().join("exact"))]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(!tmp.path().join("exact").exists());
}
