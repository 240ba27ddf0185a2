//! Record/replay speed on this host, measured in one run (issue 4's benchmark):
//! (a) a raw loop that only single-steps the guest, (b) `ttvm run --clock singlestep`,
//! (c) `ttvm record`, (d) `ttvm replay`, on the `timer` and `race` guests.
//!
//!     cargo bench --bench record_replay
//!
//! Prints per guest the median of several rounds and the ratios c/a and d/c, plus trace
//! bytes per event and per million steps.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ttvm_logs::{TraceLocation, TraceReader};
use ttvm_recorder::{record, RecordOptions};
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::singlestep::TimeConfig;
use ttvm_vmm::{Machine, MachineConfig, SerialSource};

const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn machine(image: &[u8], cmdline: &str) -> Machine {
    let config = MachineConfig {
        cmdline: cmdline.to_string(),
        ..MachineConfig::default()
    };
    Machine::new(config, image, Box::new(io::sink())).expect("machine")
}

struct Figures {
    steps: u64,
    raw: Duration,
    run: Duration,
    record: Duration,
    replay: Duration,
    events: u64,
    event_bytes: u64,
}

fn measure(name: &str, cmdline: &str) -> Figures {
    let image = ttvm_guests::elf_bytes(name).expect("guest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut raw, mut run, mut rec, mut rep) = (vec![], vec![], vec![], vec![]);
    let mut steps = 0;
    let mut events = 0;
    let mut event_bytes = 0;
    for round in 0..ROUNDS {
        // (c) record
        let dir = tmp.path().join(format!("t{round}"));
        let opts = RecordOptions {
            machine: MachineConfig {
                cmdline: cmdline.to_string(),
                ..MachineConfig::default()
            },
            time: TimeConfig::default(),
            chaos: None,
            guest_name: name.to_string(),
            image_name: format!("{name}.elf"),
            location: TraceLocation::Exact(dir.clone()),
            progress: false,
            checkpoints: Default::default(),
            clock: ttvm_recorder::RecordClock::Singlestep,
        };
        let recording = record(
            opts,
            image,
            Box::new(io::sink()),
            SerialSource::None,
            Arc::new(AtomicBool::new(false)),
        )
        .expect("record");
        rec.push(recording.duration);
        steps = recording.steps;
        events = recording.events;
        event_bytes = std::fs::metadata(dir.join("events"))
            .map(|m| m.len())
            .unwrap_or(0);

        // (a) raw single steps, as many as the recording had
        let mut m = machine(image, cmdline);
        let started = Instant::now();
        m.raw_single_steps(steps).expect("raw steps");
        raw.push(started.elapsed());

        // (b) run under the single-step clock, nothing recorded
        let mut m = machine(image, cmdline);
        let mut live = LiveDriver::new(SerialSource::None);
        let report = m
            .run_stepped(&mut live, TimeConfig::default())
            .expect("run");
        run.push(report.duration);

        // (d) replay
        let replay = ttvm_replayer::replay(
            &dir,
            Box::new(io::sink()),
            Arc::new(AtomicBool::new(false)),
            None,
        )
        .expect("replay");
        rep.push(replay.duration());
        assert_eq!(replay.position, steps, "replay reached the recorded end");
        let _ = TraceReader::open(&dir).expect("trace opens");
    }
    Figures {
        steps,
        raw: median(raw),
        run: median(run),
        record: median(rec),
        replay: median(rep),
        events,
        event_bytes,
    }
}

fn main() {
    println!("record/replay benchmark: median of {ROUNDS} rounds per guest, one process");
    println!(
        "{:<8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>9} {:>12}",
        "guest",
        "steps",
        "a raw",
        "b run",
        "c record",
        "d replay",
        "us/step",
        "c/a",
        "d/c",
        "B/event",
        "B/Msteps"
    );
    for (name, cmdline) in [("timer", ""), ("race", ""), ("race", "race.hz=4000")] {
        let f = measure(name, cmdline);
        let label = if cmdline.is_empty() {
            name.to_string()
        } else {
            format!("{name}*")
        };
        println!(
            "{:<8} {:>7} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>7.2} {:>7.3} {:>7.3} {:>9.2} {:>12.0}",
            label,
            f.steps,
            f.raw.as_secs_f64() * 1e3,
            f.run.as_secs_f64() * 1e3,
            f.record.as_secs_f64() * 1e3,
            f.replay.as_secs_f64() * 1e3,
            f.raw.as_secs_f64() * 1e6 / f.steps as f64,
            f.record.as_secs_f64() / f.raw.as_secs_f64(),
            f.replay.as_secs_f64() / f.record.as_secs_f64(),
            f.event_bytes as f64 / f.events as f64,
            f.event_bytes as f64 * 1e6 / f.steps as f64,
        );
    }
    println!(
        "(race* = race.hz=4000: more interrupts. b, c, d time the stepped loop itself \
         (machine and trace set-up and the final whole-machine digest excluded).)"
    );
}
