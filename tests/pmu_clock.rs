//! The performance-counter clock as a user meets it: `--clock pmu` fails clearly where no
//! PMU counts guest branches, `--clock auto` records with singlestep and says why, a trace
//! of a counter this host lacks is refused up front with the reason, and, where a PMU
//! exists, the real counter is checked end to end (where none exists, that test says so
//! in the test output; it never passes silently). Everywhere, the pmu clock's own record
//! and replay loop (free runs, stops at exits, convergence to overflow and kick stops) runs
//! with ttvm's software branch counter (`--clock pmu-emulated`): every guest that does not
//! read the TSC replays exactly, and one that does is reported as diverged, with the cause.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use ttvm_logs::{Event, TraceReader};
use ttvm_vmm::run::pmu::probe::{probe, PmuProbe};

/// Printed past libtest's output capture, so a skipped hardware test is always visible.
fn announce(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn host_pmu() -> PmuProbe {
    probe()
}

fn record_hello(dir: &Path, clock: &str) -> std::process::Output {
    record_with(dir, clock, "hello", &[])
}

fn record_with(dir: &Path, clock: &str, name: &str, extra: &[&str]) -> std::process::Output {
    let g = guest(name);
    let mut args = vec!["record", "-o", dir.to_str().unwrap(), "--clock", clock];
    args.extend_from_slice(extra);
    args.push(g.to_str().unwrap());
    run(&args)
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
    assert_eq!(header.clock.name(), "singlestep");

    // An explicit singlestep needs no note.
    let o = record_hello(&tmp.path().join("ss"), "singlestep");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));

    let o = record_hello(&tmp.path().join("bad"), "tsc");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("auto, pmu, singlestep or pmu-emulated"),
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
    let recorded = header["clock"]["params"].clone();
    header["clock"]["name"] = "pmu".into();
    header["clock"]["params"] = serde_json::json!({
        "counter": {"kind": "hardware", "vendor": "CyrixInstead", "event": 0x99},
        "ns_per_tick": 100,
        "skid": 1000,
        "tsc_base": recorded["tsc_base"],
        "boot_wall_clock_ns": recorded["boot_wall_clock_ns"],
        "kvm_module": recorded["kvm_module"],
    });
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

/// race with a fixed seed instead of the TSC, and a timer tick every ~10 guest branches.
const RACE_WITHOUT_TSC: &[&str] = &[
    "--time-rate",
    "1000",
    "--cmdline",
    "race.seed=7 race.hz=20000",
];

/// The serial output, exit status and `--json` report of one command.
struct Ran {
    serial: Vec<u8>,
    status: Option<i32>,
    stderr: String,
    json: Option<serde_json::Value>,
}

fn run_to_file(tmp: &Path, tag: &str, args: &[&str]) -> Ran {
    let serial = tmp.join(format!("{tag}.serial"));
    let mut all = vec![args[0], "--serial-out", serial.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    let o = run(&all);
    Ran {
        serial: std::fs::read(&serial).unwrap_or_default(),
        status: o.status.code(),
        stderr: stderr(&o),
        json: serde_json::from_slice(&o.stdout).ok(),
    }
}

/// The final digest of a trace and its stops: (asynchronous, at exits).
fn digest_and_stops(trace: &Path) -> (String, usize, usize) {
    let mut reader = TraceReader::open(trace).unwrap();
    let (mut digest, mut asynchronous, mut exits) = (None, 0, 0);
    for rec in reader.events() {
        match rec.unwrap().event {
            Event::StateDigest { digest: d } => digest = Some(format!("{d:#018x}")),
            Event::PmuStop {
                asynchronous: true, ..
            } => asynchronous += 1,
            Event::PmuStop { .. } => exits += 1,
            _ => {}
        }
    }
    (digest.expect("a final digest"), asynchronous, exits)
}

#[test]
fn the_pmu_clock_loop_records_and_replays_every_guest_without_tsc_reads_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, "pmu clock\ninput\n").unwrap();
    // race: a fixed seed instead of the TSC, and timer ticks every ~10 guest branches, so
    // interrupts land while the guest computes: the recording stops there by overflow, and
    // the replay must converge to each such stop exactly.
    let race = RACE_WITHOUT_TSC;
    let cases: [(&str, &[&str], Option<i32>); 7] = [
        ("hello", &["--cmdline", "x=1"], Some(0)),
        ("timer", &[], Some(10)),
        ("rtc", &[], Some(0)),
        ("hello32", &[], Some(0)),
        ("crash", &[], Some(121)),
        ("echo", &["--serial-in", input.to_str().unwrap()], Some(0)),
        ("race", race, None),
    ];
    for (name, extra, status) in cases {
        let trace = tmp.path().join(name);
        let mut args = vec!["record", "-o", trace.to_str().unwrap()];
        args.extend_from_slice(&["--clock", "pmu-emulated"]);
        args.extend_from_slice(extra);
        let g = guest(name);
        args.push(g.to_str().unwrap());
        let rec = run_to_file(tmp.path(), &format!("{name}-rec"), &args);
        if status.is_some() {
            assert_eq!(rec.status, status, "{name}: {}", rec.stderr);
        }
        assert!(rec.stderr.contains(" ticks, "), "{name}: {}", rec.stderr);
        assert!(!rec.serial.is_empty(), "{name}: no output");
        let header = TraceReader::open(&trace).unwrap().header().clone();
        assert_eq!(header.clock.name(), "pmu", "{name}");
        assert!(
            matches!(
                &header.clock.params,
                ttvm_logs::ClockParams::Pmu(p) if p.counter == ttvm_logs::PmuCounter::Emulated
            ),
            "{name}"
        );
        let (digest, asynchronous, exits) = digest_and_stops(&trace);
        assert!(exits >= 1, "{name}: no stop logged");
        if name == "race" {
            assert!(
                asynchronous >= 3,
                "{name}: {asynchronous} asynchronous stops"
            );
        }
        for i in 0..2 {
            let rep = run_to_file(
                tmp.path(),
                &format!("{name}-rep{i}"),
                &["replay", "--json", trace.to_str().unwrap()],
            );
            let json = rep.json.unwrap_or_else(|| panic!("{name}: {}", rep.stderr));
            assert_eq!(json["result"], "reproduced", "{name}: {json}");
            assert_eq!(
                rep.serial, rec.serial,
                "{name}: serial output of replay {i}"
            );
            assert_eq!(rep.status, rec.status, "{name}: exit status of replay {i}");
            assert_eq!(
                json["final_digest"],
                digest.as_str(),
                "{name}: digest of replay {i}"
            );
            assert_eq!(
                json["position"],
                header_final_position(&trace),
                "{name}: final position of replay {i}"
            );
        }
    }
}

fn header_final_position(trace: &Path) -> u64 {
    let reader = TraceReader::open(trace).unwrap();
    reader.header().close.as_ref().unwrap().final_position
}

#[test]
fn a_guest_that_reads_the_tsc_is_reported_diverged_under_the_pmu_clock_with_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("entropy");
    let g = guest("entropy");
    let rec = run_to_file(
        tmp.path(),
        "rec",
        &[
            "record",
            "-o",
            trace.to_str().unwrap(),
            "--clock",
            "pmu-emulated",
            g.to_str().unwrap(),
        ],
    );
    assert_eq!(rec.status, Some(0), "{}", rec.stderr);
    // RDRAND cannot be trapped while the guest runs freely: the guest's CPUID hides it
    // (this host's PVM answers CPUID itself and shows it anyway; real KVM does not).
    let header = TraceReader::open(&trace).unwrap().header().clone();
    let leaf1 = header
        .machine
        .cpuid
        .iter()
        .find(|e| e.function == 1)
        .unwrap();
    assert_eq!(leaf1.ecx & (1 << 30), 0, "RDRAND hidden");
    let rep = run_to_file(tmp.path(), "rep", &["replay", trace.to_str().unwrap()]);
    assert_eq!(
        rep.status,
        Some(ttvm_vmm::exit_code::DIVERGENCE),
        "{}",
        rep.stderr
    );
    assert!(rep.stderr.contains("replay diverged"), "{}", rep.stderr);
    assert!(rep.stderr.contains("likely cause:"), "{}", rep.stderr);
    assert!(rep.stderr.contains("TSC"), "{}", rep.stderr);
}

#[test]
fn seeking_in_a_pmu_trace_is_refused_with_the_reason_and_bad_clocks_with_chaos_too() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("hello");
    let o = record_hello(&trace, "pmu-emulated");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["replay", "--goto", "10", trace.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("pmu clock"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--clock singlestep"), "{}", stderr(&o));
    let o = record_with(
        &tmp.path().join("chaos"),
        "pmu-emulated",
        "hello",
        &["--chaos"],
    );
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--chaos works with the single-step clock"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_replay_that_goes_another_way_than_the_recorded_stops_is_a_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("race");
    let o = record_with(&trace, "pmu-emulated", "race", RACE_WITHOUT_TSC);
    assert!(stderr(&o).contains("ttvm: trace:"), "{}", stderr(&o));
    let events: Vec<Event> = TraceReader::open(&trace)
        .unwrap()
        .events()
        .map(|r| r.unwrap().event)
        .collect();
    let nth_stop = |asynchronous: bool| {
        events
            .iter()
            .position(|e| matches!(e, Event::PmuStop { asynchronous: a, .. } if *a == asynchronous))
            .map(|i| i as u64)
    };
    // An overflow stop whose RCX never occurs there: the convergence cannot reach it.
    let target = nth_stop(true).expect("an asynchronous stop");
    let bad = tmp.path().join("bad-async");
    tampered_copy(&trace, &bad, |i, r| {
        if let (true, Event::PmuStop { rcx, .. }) = (i == target, &mut r.event) {
            *rcx ^= 0x40;
        }
    });
    let o = run(&["replay", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("replay diverged at event"), "{err}");
    assert!(
        err.contains("overshot") || err.contains("not reached"),
        "{err}"
    );
    // An exit stop at another RIP: the replay meets the real exit and passes the marker.
    let target = events
        .iter()
        .enumerate()
        .skip(1)
        .position(|(_, e)| {
            matches!(
                e,
                Event::PmuStop {
                    asynchronous: false,
                    ..
                }
            )
        })
        .map(|i| i as u64 + 1)
        .expect("an exit stop after the first");
    let bad = tmp.path().join("bad-exit");
    tampered_copy(&trace, &bad, |i, r| {
        if let (true, Event::PmuStop { rip, .. }) = (i == target, &mut r.event) {
            *rip += 1;
        }
    });
    let o = run(&["replay", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("replay diverged at event"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// Live input from a pipe, arriving while the guest polls the UART and later while it
/// sleeps: the reader thread kicks the vCPU, the recording stops where the kick lands (or at
/// the next exit) and delivers the bytes there; the replay delivers them at the same stops.
#[test]
fn live_input_under_the_pmu_clock_is_delivered_where_it_arrived_and_replays_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("echo");
    let mut child = ttvm()
        .args([
            "record",
            "--clock",
            "pmu-emulated",
            "--serial-in",
            "-",
            "-o",
        ])
        .arg(&trace)
        .arg(guest("echo"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for piece in [&b"ab"[..], b"c\n", b"def\n"] {
        std::thread::sleep(std::time::Duration::from_millis(250));
        stdin.write_all(piece).unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"echo: ready\nABC\nDEF\necho: 8 bytes\n");
    // Where the input was delivered: at an overflow/kick stop or at a guest exit.
    let mut after_async = None;
    let (mut at_kicks, mut at_exits) = (0, 0);
    for rec in TraceReader::open(&trace).unwrap().events() {
        match rec.unwrap().event {
            Event::PmuStop { asynchronous, .. } => after_async = Some(asynchronous),
            Event::SerialInput { .. } if after_async == Some(true) => at_kicks += 1,
            Event::SerialInput { .. } => at_exits += 1,
            _ => {}
        }
    }
    assert!(at_kicks + at_exits >= 2, "input arrived in pieces");
    eprintln!("live input: {at_kicks} deliveries at kick stops, {at_exits} at exit stops");
    let rep = run_to_file(
        tmp.path(),
        "rep",
        &["replay", "--json", trace.to_str().unwrap()],
    );
    let json = rep.json.unwrap_or_else(|| panic!("{}", rep.stderr));
    assert_eq!(json["result"], "reproduced", "{json}");
    assert_eq!(rep.serial, out.stdout);
}
