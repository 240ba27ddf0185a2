//! The performance-counter clock as a user meets it: `--clock pmu` fails clearly where no
//! PMU counts guest branches, `--clock auto` records with singlestep and says why, a trace
//! claiming the pmu clock is refused up front with the reason, and, where a PMU exists,
//! the real counter is checked end to end. Where none exists, that test says so in the
//! test output (it never passes silently).

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use ttvm_vmm::pmu::probe::{probe, PmuProbe};

/// Printed past libtest's output capture, so a skipped hardware test is always visible.
fn announce(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn host_pmu() -> PmuProbe {
    probe()
}

fn record_hello(dir: &Path, clock: &str) -> std::process::Output {
    run(&[
        "record",
        "-o",
        dir.to_str().unwrap(),
        "--clock",
        clock,
        guest("hello").to_str().unwrap(),
    ])
}

#[test]
fn clock_pmu_without_a_pmu_fails_clearly_and_auto_falls_back_with_a_note() {
    let pmu = host_pmu();
    if pmu.available() {
        announce("pmu_clock: this host has a PMU: the no-PMU behaviour is not checked here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = record_hello(&tmp.path().join("pmu"), "pmu");
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(err.contains("--clock pmu: this host cannot count"), "{err}");
    assert!(err.contains("perf_event_open"), "{err}");
    assert!(err.contains("--clock singlestep"), "{err}");
    assert!(
        !tmp.path().join("pmu").exists(),
        "no trace directory is left behind"
    );

    let o = record_hello(&tmp.path().join("auto"), "auto");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.contains("ttvm: note:")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(
        notes[0].contains("recording with singlestep") && notes[0].contains("perf_event_open"),
        "{err}"
    );
    let header = ttvm_logs::TraceReader::open(tmp.path().join("auto"))
        .unwrap()
        .header()
        .clone();
    assert_eq!(header.clock.name, "singlestep");

    // An explicit singlestep needs no note.
    let o = record_hello(&tmp.path().join("ss"), "singlestep");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));

    let o = record_hello(&tmp.path().join("bad"), "tsc");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("auto, pmu or singlestep"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_trace_of_the_pmu_clock_is_refused_up_front_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t");
    let o = record_hello(&trace, "singlestep");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Make the header claim the pmu clock of another vendor's event.
    let path = trace.join("header.json");
    let mut header: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    header["clock"]["name"] = "pmu".into();
    header["clock"]["params"]["pmu_vendor"] = "CyrixInstead".into();
    header["clock"]["params"]["pmu_event"] = "0x99".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&header).unwrap()).unwrap();
    let o = run(&["replay", trace.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("recorded with the pmu clock (event 0x99 on CyrixInstead)"),
        "{err}"
    );
    if host_pmu().available() {
        assert!(err.contains("not the same positions"), "{err}");
    } else {
        assert!(err.contains("cannot count guest branches"), "{err}");
    }
    assert!(stdout(&o).is_empty(), "nothing replayed: {}", stdout(&o));
}

/// On a host with a PMU: the hardware counter counts a known guest loop exactly and the
/// convergence reaches logged positions again with equal registers (`ttvm doctor`'s
/// "pmu accuracy"), and a guest records and replays with `--clock pmu`.
#[test]
fn pmu_clock_on_real_hardware_or_a_visible_skip() {
    let pmu = host_pmu();
    if !pmu.available() {
        announce(&format!(
            "SKIPPED pmu_clock_on_real_hardware: this host has no usable PMU ({}); the pmu \
             clock's hardware path did NOT run here (its convergence is tested with a \
             simulated counter in ttvm-vmm's pmu::converge tests and on this KVM with a \
             software counter in pmu::selftest and `ttvm doctor`)",
            pmu.error
                .as_deref()
                .unwrap_or("no branch event for this CPU")
        ));
        return;
    }
    let o = run(&["doctor", "--json"]);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let accuracy = d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pmu accuracy")
        .unwrap()
        .clone();
    assert_eq!(accuracy["status"], "ok", "{accuracy}");
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("pmu");
    let o = record_hello(&trace, "pmu");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["replay", trace.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
