//! Seeking: checkpoints (the trace's and the replayer's own) restore the machine exactly.
//! Every answer of a seek is compared with a straight replay from the start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ttvm_logs::TraceLocation;
use ttvm_recorder::checkpoints::CheckpointEvery;
use ttvm_recorder::{record, RecordOptions};
use ttvm_replayer::timeline::{Arrival, Timeline, TimelineOptions};
use ttvm_vmm::run::singlestep::{Position, TimeConfig};
use ttvm_vmm::{MachineConfig, SerialSource};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

fn record_guest(dir: &Path, name: &str, every: CheckpointEvery) -> PathBuf {
    let image = std::fs::read(ttvm_guests::elf_path(name).expect("guest")).expect("image");
    let trace = dir.join(name);
    let rec = record(
        RecordOptions {
            machine: MachineConfig::default(),
            time: TimeConfig::default(),
            chaos: None,
            guest_name: name.into(),
            image_name: format!("{name}.elf"),
            location: TraceLocation::Exact(trace.clone()),
            progress: false,
            checkpoints: every,
            clock: ttvm_recorder::RecordClock::Singlestep,
        },
        &image,
        Box::new(std::io::sink()),
        SerialSource::None,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("record");
    assert!(rec.end.is_some());
    trace
}

fn open(trace: &Path, out: Buf, interval: u64) -> Timeline {
    open_with(trace, out, interval, true)
}

fn open_with(trace: &Path, out: Buf, interval: u64, trace_checkpoints: bool) -> Timeline {
    Timeline::open(
        trace,
        Box::new(out),
        Arc::new(AtomicBool::new(false)),
        TimelineOptions {
            interval,
            trace_checkpoints,
            ..TimelineOptions::default()
        },
    )
    .expect("open timeline")
}

/// A small deterministic generator (the test must not depend on a crate's algorithm).
fn positions(seed: u64, n: usize, below: u64) -> Vec<Position> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % below
        })
        .collect()
}

struct Straight {
    digests: Vec<(Position, u64, usize)>,
    output: Vec<u8>,
    end: Position,
    end_digest: u64,
}

/// Straight replay from the start, stopping at each position in order (no restores),
/// showing all the output.
fn straight(trace: &Path, mut at: Vec<Position>) -> Straight {
    at.sort_unstable();
    at.dedup();
    let out = Buf::default();
    let mut t = open_with(trace, out.clone(), u64::MAX / 4, false);
    let mut digests = Vec::new();
    // Forward execution (seeks are jumps and show no output).
    for p in at {
        let arrival = t.run_forward(Box::new(|_, _| false), Some(p));
        assert_eq!(arrival.expect("run"), Arrival::Target);
        digests.push((p, t.digest(), out.len()));
    }
    let arrival = t.run_forward(Box::new(|_, _| false), None);
    assert!(matches!(arrival.expect("end"), Arrival::End(_)));
    assert_eq!(t.stats.restores, 0, "a straight replay never restores");
    Straight {
        digests,
        output: out.bytes(),
        end: t.position(),
        end_digest: t.digest(),
    }
}

fn check_guest(name: &str, seed: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let trace = record_guest(dir.path(), name, CheckpointEvery::Steps(2000));
    let count = ttvm_logs::TraceReader::open(&trace)
        .unwrap()
        .checkpoints()
        .unwrap()
        .len();
    assert!(
        count >= 2,
        "{name}: the recording wrote {count} checkpoints"
    );
    // The end position, from a first straight pass.
    let probe = straight(&trace, vec![0]);
    let wanted = positions(seed, 20, probe.end);
    let reference = straight(&trace, wanted.clone());
    let digest_at = |p: Position| {
        reference
            .digests
            .iter()
            .find(|d| d.0 == p)
            .map(|d| (d.1, d.2))
            .unwrap()
    };

    // Random order, backwards and forwards, on one timeline with its own checkpoints.
    let out = Buf::default();
    let mut t = open(&trace, out.clone(), 1500);
    for &p in &wanted {
        assert_eq!(t.seek(p).expect("seek"), Arrival::Target, "{name} seek {p}");
        assert_eq!(t.position(), p);
        assert_eq!(t.digest(), digest_at(p).0, "{name}: digest after seek({p})");
    }
    assert!(t.stats.restores > 0);
    assert!(t.stats.checkpoints_taken > 0);

    // Fresh timelines: seek (through a trace checkpoint), then on to the end.
    for &p in wanted.iter().take(4) {
        let out = Buf::default();
        let mut t = open(&trace, out.clone(), 1500);
        t.seek(p).expect("seek");
        assert_eq!(t.digest(), digest_at(p).0, "{name}: fresh seek({p})");
        let before = out.len();
        // Run on (every position executed, so all the output shows).
        let arrival = t.run_forward(Box::new(|_, _| false), None).expect("run");
        assert!(matches!(arrival, Arrival::End(_)), "{arrival:?}");
        assert_eq!(t.position(), reference.end);
        assert_eq!(
            t.digest(),
            reference.end_digest,
            "{name}: end after seek({p})"
        );
        assert_eq!(
            &out.bytes()[before..],
            &reference.output[digest_at(p).1..],
            "{name}: serial tail after seek({p})"
        );
    }
}

#[test]
fn seeks_to_random_positions_match_a_straight_replay_timer() {
    check_guest("timer", 7);
}

#[test]
fn seeks_to_random_positions_match_a_straight_replay_race() {
    check_guest("race", 11);
}

#[test]
fn damaged_trace_checkpoints_fall_back_to_earlier_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let trace = record_guest(dir.path(), "timer", CheckpointEvery::Steps(1000));
    let list = ttvm_logs::TraceReader::open(&trace)
        .unwrap()
        .checkpoints()
        .unwrap();
    assert!(list.len() >= 4);
    let target = list[3].position + 10;
    let reference = straight(&trace, vec![target]);
    // Flip a byte in checkpoint 3, cut checkpoint 2 short.
    let mut bytes = std::fs::read(&list[3].path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&list[3].path, &bytes).unwrap();
    let bytes = std::fs::read(&list[2].path).unwrap();
    std::fs::write(&list[2].path, &bytes[..bytes.len() / 3]).unwrap();
    // The typed error.
    let err = ttvm_logs::TraceReader::open(&trace)
        .unwrap()
        .read_checkpoint(list[3].id)
        .unwrap_err();
    assert!(err.to_string().contains("corrupt checkpoint"), "{err}");

    let mut t = open(&trace, Buf::default(), u64::MAX / 4);
    assert_eq!(t.seek(target).expect("seek"), Arrival::Target);
    assert_eq!(t.digest(), reference.digests[0].1);
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
    assert!(t.warnings[0].contains("checkpoint 3"), "{:?}", t.warnings);
    // Checkpoint 1 (a delta of 0) was used.
    assert!(t.stats.steps_replayed <= target - list[1].position);
}

#[test]
fn a_trace_without_checkpoints_seeks_from_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let trace = record_guest(dir.path(), "hello", CheckpointEvery::Never);
    let reference = straight(&trace, vec![1000, 3000]);
    let mut t = open(&trace, Buf::default(), 500);
    for (p, d, _) in [reference.digests[1], reference.digests[0]] {
        t.seek(p).unwrap();
        assert_eq!(t.digest(), d);
    }
    // Past the end: stops at the end of the recording.
    assert!(matches!(t.seek(u64::MAX).unwrap(), Arrival::End(_)));
    assert_eq!(t.position(), reference.end);
    assert!(matches!(
        t.seek(reference.end + 5).unwrap(),
        Arrival::End(_)
    ));
    assert_eq!(t.seek(0).unwrap(), Arrival::Target);
    assert_eq!(t.position(), 0);
}
