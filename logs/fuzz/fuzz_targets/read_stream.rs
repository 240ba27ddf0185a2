//! Fuzzes the event-stream reader with arbitrary `events` and `events.idx` bytes.
//!
//! Input layout: byte 0 = flags (bit 0: the trace is "complete" with an expected
//! count taken from byte 1), bytes 1..3 = length L of the index (u16 LE), then L bytes
//! of index, then the events file. Whatever the bytes, reading must end in events
//! and at most one error, never a panic; seeking must agree with iteration.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use ttvm_logs::EventStream;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let index_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let rest = &data[3..];
    let (index, events) = rest.split_at(index_len.min(rest.len()));
    let expected = (flags & 1 == 1).then(|| u64::from(data[1]));
    let Ok(mut stream) =
        EventStream::open(Cursor::new(events), "fuzz".into(), Some(index), expected)
    else {
        return;
    };
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(item) = stream.next_event() {
        match item {
            Ok(e) => all.push(e),
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1);
    for (n, e) in all.iter().enumerate().step_by(7) {
        if stream.seek_event(n as u64).is_ok() {
            if let Some(Ok(again)) = stream.next_event() {
                assert_eq!(&again, e);
            }
        }
    }
});
