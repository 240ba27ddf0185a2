//! Debugger operation latency on this host (issue 6's benchmark), measured in one run on
//! the longest test trace (`race` with race.hz=100 race.jitter=5000, ~280,000 positions,
//! recorded with the default checkpoint interval):
//!
//!     cargo bench --bench debugger
//!
//! At the start, middle and end of the trace: reverse-stepi (twice in a row), reverse-
//! continue to a hit 10k and 100k positions back, and continue to a hit 10k and 100k
//! positions ahead. Hits are position probes, which cost what a breakpoint check costs.
//! These are the timeline operations the gdb stub performs for those packets.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{record_guest, timeline};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let trace = tmp.path().join("long");
    let rec = record_guest(
        "race",
        "race.hz=100 race.jitter=5000",
        &trace,
        Default::default(),
    );
    let steps = rec.steps;
    println!(
        "trace: {steps} positions, {} trace checkpoints",
        rec.checkpoints.count
    );
    println!("| where | position | reverse-stepi ms (1st, 2nd) | reverse-continue 10k / 100k ms | continue 10k / 100k ms |");
    println!("| --- | --- | --- | --- | --- |");
    for (label, p) in [
        ("start", 15_000),
        ("middle", steps / 2 + 5_000),
        ("end", steps - 1_000),
    ] {
        let mut t = timeline(&trace);
        t.seek(p).expect("seek");
        let t0 = Instant::now();
        t.seek(p - 1).expect("reverse-stepi");
        let rs1 = t0.elapsed();
        let t0 = Instant::now();
        t.seek(p - 2).expect("reverse-stepi");
        let rs2 = t0.elapsed();
        let mut rc = Vec::new();
        for back in [10_000u64, 100_000] {
            t.seek(p).expect("seek");
            let hit = p.saturating_sub(back);
            let probe = Rc::new(RefCell::new(move |pos, _: &ttvm_vmm::Machine| pos == hit));
            let t0 = Instant::now();
            let found = t.find_last(p, probe).expect("reverse-continue");
            if let Some(f) = found {
                t.seek(f).expect("seek hit");
            }
            rc.push((ms(t0.elapsed()), found == Some(hit)));
        }
        let mut fc = Vec::new();
        for ahead in [10_000u64, 100_000] {
            t.seek(p).expect("seek");
            let hit = p + ahead;
            let t0 = Instant::now();
            let arrival = t
                .run_forward(Box::new(move |pos, _| pos == hit), None)
                .expect("continue");
            fc.push((ms(t0.elapsed()), format!("{arrival:?}")));
        }
        println!(
            "| {label} | {p} | {:.1}, {:.1} | {:.0}{} / {:.0}{} | {:.0} / {:.0}{} |",
            ms(rs1),
            ms(rs2),
            rc[0].0,
            if rc[0].1 { "" } else { " (no hit)" },
            rc[1].0,
            if rc[1].1 { "" } else { " (no hit)" },
            fc[0].0,
            fc[1].0,
            if fc[1].1 == "Watch" {
                ""
            } else {
                " (ran to the end)"
            },
        );
    }
}
