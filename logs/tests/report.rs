//! What `ttvm ls` and `ttvm dump` print.
mod common;

use common::*;
use ttvm_logs::report::{self, DumpEnd, DumpOptions, TraceStatus};
use ttvm_logs::*;

#[test]
fn listing_shows_complete_incomplete_and_damaged_traces() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_trace(
        &root.join("a-0"),
        &sample_events(100),
        WriterOptions::default(),
        true,
    );
    write_trace(
        &root.join("a-1"),
        &sample_events(50),
        small_chunks(200),
        false,
    );
    std::fs::create_dir(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/header.json"), b"{").unwrap();
    std::fs::create_dir(root.join("not-a-trace")).unwrap();
    std::os::unix::fs::symlink("a-0", root.join(LATEST_LINK)).unwrap();

    let rows = report::list_traces(root).unwrap();
    let by_name = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(by_name("a-0").status, TraceStatus::Complete);
    assert_eq!(by_name("a-0").events, Some(101));
    assert_eq!(by_name("a-0").duration_nanos, Some(1_234_000_000));
    assert_eq!(by_name("a-1").status, TraceStatus::Incomplete);
    assert_eq!(by_name("a-1").events, Some(50));
    assert_eq!(by_name("broken").status, TraceStatus::Damaged);
    assert!(by_name("broken")
        .error
        .as_deref()
        .unwrap()
        .contains("corrupt trace header"));

    let mut table = Vec::new();
    report::write_listing_table(&rows, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("NAME"));
    assert!(
        table.contains("complete") && table.contains("incomplete") && table.contains("damaged")
    );
}

#[test]
fn dump_prints_ranges_in_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let events = sample_events(1000);
    let dir = write_trace(&tmp.path().join("t"), &events, small_chunks(512), true);
    let mut r = TraceReader::open(&dir).unwrap();
    let mut out = Vec::new();
    let opts = DumpOptions {
        from: Some(10),
        to: Some(12),
        json: false,
    };
    assert!(matches!(
        report::dump_events(&mut r, &opts, &mut out).unwrap(),
        DumpEnd::Done
    ));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        format!("10 @{} {}", events[10].position, events[10].event)
    );

    let mut r = TraceReader::open(&dir).unwrap();
    let mut out = Vec::new();
    let opts = DumpOptions {
        from: Some(998),
        to: None,
        json: true,
    };
    report::dump_events(&mut r, &opts, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["index"], 998);
    assert_eq!(lines[2]["kind"], "end");
}

#[test]
fn dump_of_an_unfinished_trace_prints_everything_then_ends_early() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_trace(
        &tmp.path().join("t"),
        &sample_events(300),
        small_chunks(256),
        false,
    );
    let mut r = TraceReader::open(&dir).unwrap();
    let mut out = Vec::new();
    let end = report::dump_events(&mut r, &DumpOptions::default(), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 300);
    let DumpEnd::Error(e) = end else {
        panic!("no error")
    };
    assert_eq!(e.ends_early(), Some(300));

    let mut r = TraceReader::open(&dir).unwrap();
    let (stats, err) = report::compute_stats(&mut r, &DumpOptions::default());
    assert_eq!(stats.events, 300);
    assert!(!stats.complete);
    assert_eq!(stats.by_kind[&EventKind::Interrupt].count, 43);
    assert!(err.unwrap().ends_early().is_some());
    let mut text = Vec::new();
    report::write_stats(&stats, &mut text).unwrap();
    assert!(String::from_utf8(text).unwrap().contains("interrupt"));
}
