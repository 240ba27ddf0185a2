//! Helpers for the end-to-end tests: run the real `ttvm` binary on the test guests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub fn ttvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ttvm"))
}

pub fn guest(name: &str) -> PathBuf {
    ttvm_guests::elf_path(name).unwrap_or_else(|| panic!("no test guest {name}"))
}

/// Runs `ttvm ARGS` with `stdin` bytes as standard input.
pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = ttvm()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ttvm");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait ttvm")
}

/// Runs `ttvm ARGS` with no standard input.
pub fn run(args: &[&str]) -> Output {
    ttvm()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ttvm")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status and exact stdout, showing stderr on failure.
pub fn assert_run(o: &Output, status: i32, expected_stdout: &str) {
    assert_eq!(
        (o.status.code(), stdout(o).as_str()),
        (Some(status), expected_stdout),
        "stderr: {}",
        stderr(o)
    );
}

/// Copies the trace `src` to `dst` through the trace writer, letting `edit` change event i.
pub fn tampered_copy(
    src: &std::path::Path,
    dst: &std::path::Path,
    edit: impl Fn(u64, &mut ttvm_logs::EventRecord),
) {
    let mut reader = ttvm_logs::TraceReader::open(src).unwrap();
    let header = reader.header().clone();
    let meta = ttvm_logs::TraceMeta {
        guest_name: header.guest_name.clone(),
        ttvm_version: header.ttvm_version.clone(),
        machine: header.machine.clone(),
        clock: header.clock.clone(),
        host: header.host.clone(),
        guest_image_name: header.guest_image.name.clone(),
    };
    let image = reader.guest_image().unwrap();
    let mut writer = ttvm_logs::TraceWriter::create(
        &ttvm_logs::TraceLocation::Exact(dst.to_path_buf()),
        &meta,
        &image,
    )
    .unwrap();
    for (i, rec) in reader.events().enumerate() {
        let mut rec = rec.unwrap();
        edit(i as u64, &mut rec);
        writer.push(rec).unwrap();
    }
    let close = header.close.unwrap();
    writer
        .finish(ttvm_logs::CloseInfo {
            end_reason: close.end_reason,
            final_position: close.final_position,
            duration: std::time::Duration::from_nanos(close.duration_nanos),
            counters: close.counters,
        })
        .unwrap();
}
