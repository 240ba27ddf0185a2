//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::Duration;
use ttvm_logs::*;

pub fn meta() -> TraceMeta {
    TraceMeta {
        guest_name: "test".into(),
        ttvm_version: "0.1.0-test".into(),
        machine: MachineConfig {
            mem_bytes: 64 << 20,
            cmdline: "console=ttyS0".into(),
            cpuid: vec![CpuidEntry {
                function: 1,
                eax: 0x806ec,
                ..CpuidEntry::default()
            }],
        },
        clock: ClockInfo {
            semantics: "guest instructions retired, counted by single-stepping".into(),
            params: Default::default(),
        },
        host: HostInfo::parse_cpuinfo("vendor_id : GenuineIntel\ncpu family : 6\n"),
        guest_image_name: "hello.elf".into(),
    }
}

pub const IMAGE: &[u8] = b"\x7fELF pretend guest image with some bytes";

/// Options producing many small chunks and no time-based flushes (deterministic).
pub fn small_chunks(bytes: usize) -> WriterOptions {
    WriterOptions {
        chunk_bytes: bytes,
        flush_interval: None,
        ..WriterOptions::default()
    }
}

/// A mixed, deterministic stream of `n` events.
pub fn sample_events(n: u64) -> Vec<EventRecord> {
    (0..n)
        .map(|i| {
            let position = i * 37 + (i % 5);
            let event = match i % 7 {
                0 => Event::Interrupt {
                    vector: (i % 256) as u8,
                },
                1 => Event::SerialInput {
                    bytes: vec![b'a' + (i % 26) as u8; (i % 4) as usize],
                },
                2 => Event::HostTime {
                    nanos: i * 1_000_003,
                },
                3 => Event::Rdtsc {
                    value: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                },
                4 => Event::Rdrand {
                    value: i ^ 0xdead_beef,
                    ok: i % 3 != 0,
                },
                5 => Event::DeviceData {
                    device: (i % 3) as u16,
                    bytes: (0..(i % 20) as u8).collect(),
                },
                _ => Event::StateDigest {
                    digest: i.wrapping_mul(0x1234_5678_9abc_def1),
                },
            };
            EventRecord { position, event }
        })
        .collect()
}

pub fn close_info(final_position: u64) -> CloseInfo {
    CloseInfo {
        end_reason: EndReason::GuestExit { status: 0 },
        final_position,
        duration: Duration::from_millis(1234),
        counters: [("vm_exits".to_string(), 42)].into_iter().collect(),
    }
}

/// Writes `events` into `dir` and closes the trace when `finish` is set; returns the dir.
pub fn write_trace(
    dir: &Path,
    events: &[EventRecord],
    opts: WriterOptions,
    finish: bool,
) -> PathBuf {
    let mut w = TraceWriter::create_with(
        &TraceLocation::Exact(dir.to_path_buf()),
        &meta(),
        IMAGE,
        opts,
    )
    .expect("create");
    for e in events {
        w.push(e.clone()).expect("push");
    }
    if finish {
        let close = match events.last() {
            // The close record must agree with an End pushed last.
            Some(EventRecord {
                position,
                event: Event::End { reason },
            }) => CloseInfo {
                end_reason: reason.clone(),
                ..close_info(*position)
            },
            last => close_info(last.map_or(0, |e| e.position).saturating_add(10)),
        };
        w.finish(close).expect("finish");
    } else {
        w.flush().expect("flush");
        std::mem::forget(w);
    }
    dir.to_path_buf()
}

/// Reads every event; returns the events and the terminating error, if any.
pub fn read_all(dir: &Path) -> Result<(Vec<EventRecord>, Option<ReadError>), ReadError> {
    let mut r = TraceReader::open(dir)?;
    let mut out = Vec::new();
    let mut err = None;
    for item in r.events() {
        match item {
            Ok(e) => out.push(e),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    Ok((out, err))
}

/// A finished trace of `events` sample events and two checkpoints (positions 100 and
/// 900), written into `dir`.
pub fn trace_with_checkpoints(dir: &Path, events: u64) -> PathBuf {
    let mut w = TraceWriter::create_with(
        &TraceLocation::Exact(dir.to_path_buf()),
        &meta(),
        IMAGE,
        small_chunks(256),
    )
    .unwrap();
    for e in sample_events(events) {
        w.push(e).unwrap();
    }
    w.add_checkpoint(100, b"checkpoint one").unwrap();
    w.add_checkpoint(900, &[7u8; 5000]).unwrap();
    w.finish(close_info(events * 40)).unwrap();
    dir.to_path_buf()
}

/// Creates a FIFO (named pipe) at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}
