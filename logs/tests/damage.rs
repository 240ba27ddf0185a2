//! Damaged, truncated and too-new traces: typed errors only, never a panic, never a
//! wrong event.
mod common;

use common::*;
use std::path::Path;
use ttvm_logs::chunk::{ChunkHeader, CHUNK_HEADER_LEN, PREAMBLE_LEN};
use ttvm_logs::*;

/// Reads `dir` and checks the outcome is a prefix of `expected` followed by nothing or
/// a typed error; returns the number of events read and the error.
fn check_prefix(dir: &Path, expected: &[EventRecord]) -> (usize, Option<ReadError>) {
    match read_all(dir) {
        Err(e) => (0, Some(e)),
        Ok((events, err)) => {
            assert!(events.len() <= expected.len(), "more events than written");
            assert_eq!(
                &events[..],
                &expected[..events.len()],
                "a wrong event was returned"
            );
            (events.len(), err)
        }
    }
}

/// Byte offset of every chunk boundary in the events file.
fn chunk_ends(dir: &Path) -> Vec<u64> {
    let r = TraceReader::open(dir).unwrap();
    r.stream()
        .chunks()
        .iter()
        .map(|c| c.offset + c.header.disk_len())
        .collect()
}

#[test]
fn truncation_at_every_offset_of_an_incomplete_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(300);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(300), false);
    let ends = chunk_ends(&dir);
    assert!(ends.len() >= 5, "want several chunks, got {}", ends.len());
    let full = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
    let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
    let counts: Vec<u64> = TraceReader::open(&dir)
        .unwrap()
        .stream()
        .chunks()
        .iter()
        .map(|c| c.header.end_event())
        .collect();
    for len in 0..=full.len() {
        std::fs::write(dir.join(EVENTS_FILE), &full[..len]).unwrap();
        let (n, err) = check_prefix(&dir, &events);
        // Exactly the chunks wholly inside the prefix are readable, then "ends early".
        let whole = ends
            .iter()
            .zip(&counts)
            .filter(|(e, _)| **e <= len as u64)
            .map(|(_, c)| *c)
            .next_back()
            .unwrap_or(0);
        assert_eq!(n as u64, whole, "len {len}");
        let err = err.unwrap_or_else(|| panic!("len {len}: no error"));
        assert_eq!(err.ends_early(), Some(whole), "len {len}: {err}");
        assert_eq!(
            err.to_string(),
            format!("trace ends early after event {whole}: recorder did not finish")
        );
        // The index may also be cut anywhere (it is written after the chunk).
        let cut = len % (index.len() + 1);
        std::fs::write(dir.join(INDEX_FILE), &index[..cut]).unwrap();
        let (n2, _) = check_prefix(&dir, &events);
        assert_eq!(n2, n, "len {len}, index cut at {cut}");
        std::fs::write(dir.join(INDEX_FILE), &index).unwrap();
    }
}

#[test]
fn truncation_of_a_complete_trace_is_an_error_not_a_shorter_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(200);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(300), true);
    let full = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
    for len in 0..full.len() {
        std::fs::write(dir.join(EVENTS_FILE), &full[..len]).unwrap();
        let (_, err) = check_prefix(&dir, &events);
        let err = err.unwrap_or_else(|| panic!("len {len}: a cut complete trace read cleanly"));
        assert!(err.ends_early().is_none(), "len {len}: {err}");
    }
}

/// A small xorshift generator: deterministic "random" flips.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_byte_flips_give_typed_errors_only() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(400);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(400), true);
    let mut expected = events.clone();
    expected.push(read_all(&dir).unwrap().0.pop().unwrap());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for file in [EVENTS_FILE, INDEX_FILE] {
        let good = std::fs::read(dir.join(file)).unwrap();
        for round in 0..600 {
            let mut bad = good.clone();
            let flips = 1 + rng.next() % 4;
            for _ in 0..flips {
                let at = (rng.next() % bad.len() as u64) as usize;
                bad[at] ^= 1 << (rng.next() % 8);
            }
            std::fs::write(dir.join(file), &bad).unwrap();
            let (n, err) = check_prefix(&dir, &expected);
            if file == EVENTS_FILE {
                // Every flip in the events file is detected.
                assert!(err.is_some(), "{file} round {round}: damage went unnoticed");
                assert!(n < expected.len());
            } else {
                // The index is only a hint: the stream is still read in full.
                assert!(err.is_none(), "{file} round {round}: {err:?}");
                assert_eq!(n, expected.len());
            }
        }
        std::fs::write(dir.join(file), &good).unwrap();
    }
}

#[test]
fn corrupt_chunk_error_names_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(300);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(300), true);
    let ends = chunk_ends(&dir);
    let mut bytes = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
    // Damage the payload of the third chunk.
    let third = ends[1] as usize;
    bytes[third + CHUNK_HEADER_LEN + 3] ^= 0xff;
    std::fs::write(dir.join(EVENTS_FILE), &bytes).unwrap();
    let (n, err) = check_prefix(&dir, &events);
    let err = err.unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, ReadError::Stream(StreamError::Corrupt { offset, .. }) if offset == third as u64),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("at byte {third}")) && msg.contains("events"),
        "{msg}"
    );
    assert!(n > 0);
    // Later chunks stay reachable by seeking past the damage.
    let mut r = TraceReader::open(&dir).unwrap();
    let after = r.stream().chunks()[3].header.first_event;
    r.seek_event(after).unwrap();
    assert_eq!(r.next_event().unwrap().unwrap(), events[after as usize]);
}

#[test]
fn newer_compat_version_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_trace(
        &tmp.path().join("t"),
        &sample_events(10),
        WriterOptions::default(),
        true,
    );
    let path = dir.join("header.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["format_version"] = (FORMAT_VERSION + 1).into();
    v["compat_version"] = (FORMAT_VERSION + 1).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = TraceReader::open(&dir).unwrap_err();
    assert!(matches!(
        err,
        ReadError::Header(HeaderError::NewerFormat { .. })
    ));
    assert!(err.to_string().starts_with(&format!(
        "trace made by a newer ttvm (format {}); upgrade ttvm to read it",
        FORMAT_VERSION + 1
    )));
    // A newer format that old readers can still read (compat unchanged) opens fine.
    v["compat_version"] = COMPAT_VERSION.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(TraceReader::open(&dir).is_ok());
}

#[test]
fn unknown_event_kind_says_newer_ttvm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_trace(&tmp.path().join("t"), &[], WriterOptions::default(), false);
    // A chunk holding one event with tag 200 (a kind from the future).
    let raw = [200u8, 5, 1, 2, 3];
    let payload = zstd::bulk::compress(&raw, 3).unwrap();
    let header = ChunkHeader {
        compressed_len: payload.len() as u32,
        raw_len: raw.len() as u32,
        event_count: 1,
        first_event: 0,
        base_position: 0,
        last_position: 5,
        payload_crc: crc32fast::hash(&payload),
    };
    let mut bytes = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
    assert_eq!(bytes.len(), PREAMBLE_LEN);
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&payload);
    std::fs::write(dir.join(EVENTS_FILE), &bytes).unwrap();
    let (n, err) = read_all(&dir).unwrap();
    assert!(n.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            ReadError::Stream(StreamError::UnknownEventKind { kind: 200, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("unknown event kind 200")
            && err.to_string().contains("newer ttvm")
    );
}

#[test]
fn newer_stream_layout_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_trace(
        &tmp.path().join("t"),
        &sample_events(3),
        WriterOptions::default(),
        true,
    );
    let mut bytes = std::fs::read(dir.join(EVENTS_FILE)).unwrap();
    bytes[8] = 9;
    std::fs::write(dir.join(EVENTS_FILE), &bytes).unwrap();
    let err = TraceReader::open(&dir).unwrap_err();
    assert!(err.to_string().contains("newer ttvm"), "{err}");
}
