//! `ttvm replay --goto`, `ttvm dump --checkpoints` and `dump --json`'s final position.

mod common;

use common::*;

fn record(dir: &std::path::Path, name: &str, every: &str) -> String {
    let trace = dir.join(name);
    let o = run(&[
        "record",
        "-o",
        trace.to_str().unwrap(),
        "--checkpoint-every",
        every,
        guest("timer").to_str().unwrap(),
    ]);
    // The timer guest exits with status 10 (its tick count).
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    trace.to_str().unwrap().to_string()
}

fn goto_json(trace: &str, pos: &str) -> serde_json::Value {
    let o = run(&["replay", trace, "--goto", pos, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("json")
}

#[test]
fn goto_through_checkpoints_matches_goto_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let with = record(tmp.path(), "with", "1000");
    let without = record(tmp.path(), "without", "never");
    for pos in ["2500", "4321"] {
        let a = goto_json(&with, pos);
        let b = goto_json(&without, pos);
        assert_eq!(a["position"], pos.parse::<u64>().unwrap());
        assert_eq!(a["arrival"], "target");
        assert_eq!(a["registers"], b["registers"], "at {pos}");
        assert_eq!(a["next_event"], b["next_event"]);
        assert!(a["restores"].as_u64().unwrap() >= 1, "{a}");
        assert!(
            a["steps_replayed"].as_u64().unwrap() < 1000,
            "replayed from a checkpoint: {a}"
        );
    }
    // The end, and beyond it.
    let end = goto_json(&with, "end");
    assert_eq!(end["arrival"], "end");
    assert_eq!(end["end"], "guest exited with status 10");
    let dump = run(&["dump", &with, "--json"]);
    let last: serde_json::Value =
        serde_json::from_str(stdout(&dump).lines().last().unwrap()).unwrap();
    assert_eq!(last["final_position"], end["position"]);
    assert!(last["checkpoints"].as_u64().unwrap() >= 5, "{last}");
    let beyond = goto_json(&with, "99999999");
    assert_eq!(beyond["position"], end["position"]);
    // Text form: position and registers.
    let o = run(&["replay", &with, "--goto", "3000"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("position 3000\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("rip 0x"), "{}", stdout(&o));
}

#[test]
fn dump_lists_checkpoints_and_bad_goto_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = record(tmp.path(), "t", "2000");
    let o = run(&["dump", &trace, "--checkpoints"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains("position") && text.contains("2000"), "{text}");
    assert!(text.contains("checkpoints,"), "{text}");
    let o = run(&["dump", &trace, "--checkpoints", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(first["position"], 2000);
    assert!(first["bytes"].as_u64().unwrap() > 0);

    let o = run(&["replay", &trace, "--goto", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give a position"), "{}", stderr(&o));
    let o = run(&[
        "record",
        "--checkpoint-every",
        "often",
        guest("hello").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a checkpoint interval"),
        "{}",
        stderr(&o)
    );
}
