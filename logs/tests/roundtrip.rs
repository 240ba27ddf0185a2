//! Writing then reading gives back exactly what was written.
mod common;

use common::*;
use proptest::prelude::*;
use ttvm_logs::*;

fn end_reason() -> impl Strategy<Value = EndReason> {
    prop_oneof![
        any::<u8>().prop_map(|status| EndReason::GuestExit { status }),
        any::<u64>().prop_map(|rip| EndReason::TripleFault { rip }),
        any::<u64>().prop_map(|rip| EndReason::HaltedForGood { rip }),
        Just(EndReason::Reset),
        (any::<u64>(), ".{0,20}")
            .prop_map(|(rip, detail)| EndReason::EmulationError { rip, detail }),
        ".{0,20}".prop_map(|message| EndReason::VmmError { message }),
        Just(EndReason::Interrupted),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        any::<u8>().prop_map(|vector| Event::Interrupt { vector }),
        bytes().prop_map(|bytes| Event::SerialInput { bytes }),
        Just(Event::SerialHangup),
        any::<u64>().prop_map(|nanos| Event::HostTime { nanos }),
        any::<u64>().prop_map(|unix_nanos| Event::WallClock { unix_nanos }),
        any::<u64>().prop_map(|value| Event::Rdtsc { value }),
        (any::<u64>(), any::<u32>()).prop_map(|(value, aux)| Event::Rdtscp { value, aux }),
        (any::<u64>(), any::<bool>()).prop_map(|(value, ok)| Event::Rdrand { value, ok }),
        (any::<u64>(), any::<bool>()).prop_map(|(value, ok)| Event::Rdseed { value, ok }),
        (any::<u16>(), bytes()).prop_map(|(device, bytes)| Event::DeviceData { device, bytes }),
        any::<u64>().prop_map(|digest| Event::StateDigest { digest }),
        proptest::collection::vec(any::<u64>(), 0..20).prop_map(|regs| Event::Registers { regs }),
        end_reason().prop_map(|reason| Event::End { reason }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(rip, rcx, asynchronous)| {
            Event::PmuStop {
                rip,
                rcx,
                asynchronous,
            }
        }),
    ]
}

/// Events with non-decreasing positions (deltas of all sizes, including huge ones).
fn records() -> impl Strategy<Value = Vec<EventRecord>> {
    let delta = prop_oneof![0u64..3, 0u64..5000, any::<u64>().prop_map(|d| d >> 4)];
    proptest::collection::vec((delta, event()), 0..300).prop_map(|items| {
        let mut position = 0u64;
        items
            .into_iter()
            .map(|(d, event)| {
                position = position.saturating_add(d);
                EventRecord { position, event }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_event_sequence_round_trips(events in records(), chunk in 16usize..4096, finish: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(chunk), finish);
        let (read, err) = read_all(&dir).unwrap();
        let mut expected = events.clone();
        if finish && !matches!(events.last(), Some(EventRecord { event: Event::End { .. }, .. })) {
            let last = events.last().map_or(0, |e| e.position);
            expected.push(EventRecord {
                position: last.saturating_add(10),
                event: Event::End { reason: EndReason::GuestExit { status: 0 } },
            });
        }
        prop_assert_eq!(&read, &expected);
        if finish {
            prop_assert!(err.is_none(), "{:?}", err);
        } else {
            prop_assert_eq!(err.and_then(|e| e.ends_early()), Some(events.len() as u64));
        }
    }

    #[test]
    fn seek_lands_on_the_right_event(events in records(), chunk in 16usize..1024, picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..10)) {
        prop_assume!(!events.is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(chunk), false);
        let mut r = TraceReader::open(&dir).unwrap();
        for pick in picks {
            let n = pick.index(events.len());
            r.seek_event(n as u64).unwrap();
            prop_assert_eq!(r.peek().unwrap().unwrap(), &events[n]);
            prop_assert_eq!(&r.next_event().unwrap().unwrap(), &events[n]);
        }
    }
}

#[test]
fn header_image_checkpoints_and_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let events = sample_events(5000);
    let mut w = TraceWriter::create_with(
        &TraceLocation::Exact(dir.clone()),
        &meta(),
        IMAGE,
        small_chunks(2048),
    )
    .unwrap();
    for e in &events[..2500] {
        w.push(e.clone()).unwrap();
    }
    let ckpt = w
        .add_checkpoint(events[2499].position, b"vcpu + memory snapshot")
        .unwrap();
    for e in &events[2500..] {
        w.push(e.clone()).unwrap();
    }
    assert!(matches!(
        w.push(EventRecord {
            position: 0,
            event: Event::SerialHangup
        }),
        Err(WriteError::PositionWentBackwards { .. })
    ));
    assert!(dir.join(INCOMPLETE_MARKER).exists());
    let summary = w.finish(close_info(1_000_000)).unwrap();
    assert_eq!(summary.event_count, 5001);
    assert!(summary.chunk_count > 10);
    assert!(!dir.join(INCOMPLETE_MARKER).exists() && dir.join(COMPLETE_MARKER).exists());

    let mut r = TraceReader::open(&dir).unwrap();
    assert!(r.is_complete());
    assert_eq!(r.event_count(), 5001);
    let h = r.header();
    assert_eq!(h.format_version, FORMAT_VERSION);
    assert_eq!(h.machine, meta().machine);
    assert_eq!(h.clock.name(), "singlestep");
    assert_eq!(h.guest_image.size, IMAGE.len() as u64);
    let close = h.close.clone().unwrap();
    assert_eq!(close.event_count, 5001);
    assert_eq!(close.final_position, 1_000_000);
    assert_eq!(close.events_by_kind["interrupt"], 715);
    assert_eq!(close.counters["vm_exits"], 42);
    assert_eq!(r.guest_image().unwrap(), IMAGE);
    let list = r.checkpoints().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, ckpt);
    assert_eq!(
        r.read_checkpoint(ckpt).unwrap(),
        (events[2499].position, b"vcpu + memory snapshot".to_vec())
    );
    r.seek_event(5000).unwrap();
    let last = r.next_event().unwrap().unwrap();
    assert_eq!(
        last.event,
        Event::End {
            reason: EndReason::GuestExit { status: 0 }
        }
    );
    assert!(r.next_event().is_none());
    assert!(matches!(
        r.seek_event(5002),
        Err(ReadError::Stream(StreamError::SeekPastEnd { .. }))
    ));
}

#[test]
fn damaged_guest_image_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_trace(
        &tmp.path().join("t"),
        &sample_events(10),
        WriterOptions::default(),
        true,
    );
    let other = zstd::bulk::compress(b"another image", 3).unwrap();
    std::fs::write(dir.join(GUEST_IMAGE_FILE), other).unwrap();
    let err = TraceReader::open(&dir).unwrap().guest_image().unwrap_err();
    assert!(matches!(err, ReadError::GuestImage { .. }), "{err}");
}

#[test]
fn missing_index_falls_back_to_walking_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(3000);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(1024), true);
    std::fs::remove_file(dir.join(INDEX_FILE)).unwrap();
    let (read, err) = read_all(&dir).unwrap();
    assert!(err.is_none());
    assert_eq!(&read[..3000], &events[..]);
}

#[test]
fn time_based_flush_happens_on_tick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let opts = WriterOptions {
        flush_interval: Some(std::time::Duration::from_millis(20)),
        ..WriterOptions::default()
    };
    let mut w =
        TraceWriter::create_with(&TraceLocation::Exact(dir.clone()), &meta(), IMAGE, opts).unwrap();
    w.push(sample_events(1)[0].clone()).unwrap();
    w.tick().unwrap();
    assert_eq!(w.chunk_count(), 0);
    std::thread::sleep(std::time::Duration::from_millis(30));
    w.tick().unwrap();
    assert_eq!(w.chunk_count(), 1);
    let (read, err) = read_all(&dir).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(err.and_then(|e| e.ends_early()), Some(1));
    drop(w);
}

#[test]
fn default_location_numbers_traces_and_links_latest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let loc = TraceLocation::InRoot { root: root.clone() };
    for _ in 0..2 {
        let w = TraceWriter::create(&loc, &meta(), IMAGE).unwrap();
        w.finish(close_info(5)).unwrap();
    }
    let latest = resolve_trace(&root, None).unwrap();
    assert_eq!(latest.file_name().unwrap(), "test-1");
    assert!(TraceReader::open(latest).unwrap().is_complete());
}
