//! A recorder killed with SIGKILL loses nothing it flushed.
//!
//! The test re-executes its own binary as the "recorder" (selected by an environment
//! variable). The child writes events, flushes after each batch and reports the number
//! of flushed events on stdout; it then buffers more events without flushing and waits
//! to be killed. The parent SIGKILLs it and checks that exactly the flushed prefix reads
//! back, followed by "trace ends early".
mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use ttvm_logs::*;

const CHILD_ENV: &str = "TTVM_LOGS_SIGKILL_CHILD_DIR";
const BATCHES: u64 = 5;
const BATCH: u64 = 2_000;

fn child(dir: &str) -> ! {
    let events = sample_events(BATCH * (BATCHES + 1));
    let opts = WriterOptions {
        chunk_bytes: 4096,
        flush_interval: None,
        ..WriterOptions::default()
    };
    let mut w =
        TraceWriter::create_with(&TraceLocation::Exact(dir.into()), &meta(), IMAGE, opts).unwrap();
    let mut out = std::io::stdout().lock();
    for batch in events.chunks(BATCH as usize).take(BATCHES as usize) {
        for e in batch {
            w.push(e.clone()).unwrap();
        }
        w.flush().unwrap();
        writeln!(out, "flushed {}", w.event_count()).unwrap();
        out.flush().unwrap();
    }
    // Buffered but never flushed: lost when the process is killed.
    for e in &events[(BATCH * BATCHES) as usize..][..100] {
        w.push(e.clone()).unwrap();
    }
    writeln!(out, "waiting").unwrap();
    out.flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn sigkilled_recorder_keeps_flushed_prefix() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkilled_recorder_keeps_flushed_prefix",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut flushed = 0;
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed = n.parse().unwrap();
        }
        if line == "waiting" {
            break;
        }
    }
    proc.kill().unwrap(); // SIGKILL on Unix
    let status = proc.wait().unwrap();
    assert!(!status.success());
    assert_eq!(flushed, BATCH * BATCHES);

    let (events, err) = read_all(&dir).unwrap();
    assert_eq!(events.len() as u64, flushed);
    assert_eq!(events, sample_events(flushed));
    let err = err.unwrap();
    assert_eq!(
        err.to_string(),
        format!("trace ends early after event {flushed}: recorder did not finish")
    );
    let r = TraceReader::open(&dir).unwrap();
    assert!(!r.is_complete());
    assert!(dir.join(INCOMPLETE_MARKER).exists());
    assert_eq!(r.guest_image().unwrap(), IMAGE);
}
