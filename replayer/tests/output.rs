//! The output index: every byte of the guest's serial output at the position of the
//! instruction that wrote it, checked against forward execution on a timeline (a different
//! mechanism: the output a run up to P shows is what the instructions before P wrote), and
//! the console of forward execution: each byte shown once, jumps show nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ttvm_logs::output_index::{output_index_key, read_output_index, OUTPUT_INDEX_FILE};
use ttvm_logs::TraceLocation;
use ttvm_recorder::checkpoints::CheckpointEvery;
use ttvm_recorder::{record, RecordOptions};
use ttvm_replayer::output::{build_transcript, load_or_build};
use ttvm_replayer::timeline::{Arrival, Timeline, TimelineOptions};
use ttvm_vmm::run::singlestep::TimeConfig;
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
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

/// Records `name`; returns the trace and the output the recording showed.
fn record_guest(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let image = std::fs::read(ttvm_guests::elf_path(name).expect("guest")).expect("image");
    let trace = dir.join(name);
    let shown = Buf::default();
    let rec = record(
        RecordOptions {
            machine: MachineConfig::default(),
            time: TimeConfig::default(),
            chaos: None,
            guest_name: name.into(),
            image_name: format!("{name}.elf"),
            location: TraceLocation::Exact(trace.clone()),
            progress: false,
            checkpoints: CheckpointEvery::Steps(1500),
            clock: ttvm_recorder::RecordClock::Singlestep,
        },
        &image,
        Box::new(shown.clone()),
        SerialSource::None,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("record");
    assert!(rec.end.is_some());
    (trace, shown.bytes())
}

fn timeline(trace: &Path, out: Buf) -> Timeline {
    Timeline::open(
        trace,
        Box::new(out),
        Arc::new(AtomicBool::new(false)),
        TimelineOptions {
            interval: 1000,
            ..TimelineOptions::default()
        },
    )
    .expect("open timeline")
}

fn never() -> ttvm_replayer::driver::Watch {
    Box::new(|_, _| false)
}

fn check_guest(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (trace, recorded) = record_guest(dir.path(), name);
    let stop = Arc::new(AtomicBool::new(false));
    let index = load_or_build(&trace, false, stop.clone(), || {}).expect("index");
    let t = index.transcript();
    assert_eq!(
        t.bytes, recorded,
        "{name}: the index holds the recording's output"
    );
    assert!(index.line_count() >= 2, "{name}");
    // Cached, and the cache is what a fresh build gives.
    let key = output_index_key(&trace).unwrap().expect("a closed trace");
    assert_eq!(read_output_index(&trace, &key).unwrap().as_ref(), Some(t));
    assert_eq!(&build_transcript(&trace, false, stop).unwrap(), t);

    // Forward execution to each line's position shows exactly the output before the
    // line; one more instruction shows its first byte.
    let out = Buf::default();
    let mut tl = timeline(&trace, out.clone());
    for line in index.lines() {
        let p = line.position;
        assert_eq!(tl.run_forward(never(), Some(p)).unwrap(), Arrival::Target);
        assert_eq!(
            out.bytes(),
            &t.bytes[..line.offset],
            "{name}: before line {line:?}"
        );
        assert_eq!(t.before(p), &t.bytes[..line.offset]);
        tl.run_forward(never(), Some(p + 1)).unwrap();
        assert_eq!(
            out.bytes(),
            &t.bytes[..=line.offset],
            "{name}: the instruction at {p} writes the first byte of {line:?}"
        );
    }
    // To the end, back to the start, to the end again: nothing is shown twice.
    assert!(matches!(
        tl.run_forward(never(), None).unwrap(),
        Arrival::End(_)
    ));
    assert_eq!(out.bytes(), recorded);
    tl.seek(0).unwrap();
    tl.run_forward(never(), None).unwrap();
    assert_eq!(out.bytes(), recorded, "{name}: shown once");
}

#[test]
fn the_index_is_exact_hello() {
    check_guest("hello");
}

#[test]
fn the_index_is_exact_timer() {
    check_guest("timer");
}

#[test]
fn jumps_show_nothing_and_forward_execution_shows_what_was_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, recorded) = record_guest(dir.path(), "hello");
    let index = load_or_build(&trace, false, Arc::new(AtomicBool::new(false)), || {}).unwrap();
    let second = index.find("^cmdline", 1).unwrap();
    let out = Buf::default();
    let mut tl = timeline(&trace, out.clone());
    // A jump past the first line shows nothing.
    tl.seek(second.position).unwrap();
    assert_eq!(out.bytes(), b"");
    // Forward from there: the rest, from the second line on.
    tl.run_forward(never(), None).unwrap();
    assert_eq!(out.bytes(), &recorded[second.offset..]);
    // Back to the start and forward: the first line, not shown yet, now shows.
    tl.seek(0).unwrap();
    tl.run_forward(never(), None).unwrap();
    let mut expected = recorded[second.offset..].to_vec();
    expected.extend_from_slice(&recorded[..second.offset]);
    assert_eq!(out.bytes(), expected);
}

#[test]
fn a_damaged_or_foreign_cache_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, recorded) = record_guest(dir.path(), "hello");
    let stop = Arc::new(AtomicBool::new(false));
    load_or_build(&trace, false, stop.clone(), || {}).unwrap();
    let path = trace.join(OUTPUT_INDEX_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let mut built = false;
    let index = load_or_build(&trace, false, stop.clone(), || built = true).unwrap();
    assert!(built, "a damaged cache is not believed");
    assert_eq!(index.transcript().bytes, recorded);
    // Rewritten whole: the next use reads it.
    let mut built = false;
    load_or_build(&trace, false, stop, || built = true).unwrap();
    assert!(!built);
}
