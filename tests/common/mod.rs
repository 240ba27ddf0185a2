//! Helpers for the end-to-end tests: run the real `ttvm` binary on the test guests.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
    rewritten_copy(src, dst, |i, mut rec| {
        edit(i, &mut rec);
        Some(rec)
    });
}

/// Copies the trace `src` to `dst` through the trace writer, writing what `rewrite` makes
/// of event i (`None` drops it).
pub fn rewritten_copy(
    src: &std::path::Path,
    dst: &std::path::Path,
    mut rewrite: impl FnMut(u64, ttvm_logs::EventRecord) -> Option<ttvm_logs::EventRecord>,
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
        if let Some(rec) = rewrite(i as u64, rec.unwrap()) {
            writer.push(rec).unwrap();
        }
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

/// Address space allowed to [`run_bounded`]'s ttvm: enough for replaying a 64 MiB guest,
/// far below what an unbounded read reaches.
pub const BOUNDED_AS_BYTES: u64 = 1 << 30;
/// How long [`run_bounded`] lets ttvm run.
pub const BOUNDED_SECONDS: u64 = 60;

/// Runs `ttvm ARGS` (with `$TTVM_TRACE_DIR` = `root` if given, no standard input) under an
/// address-space limit of [`BOUNDED_AS_BYTES`]; kills it and fails the test if it is still
/// running after [`BOUNDED_SECONDS`]. For inputs that once blocked forever or were read
/// without bound.
pub fn run_bounded(root: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = ttvm();
    if let Some(root) = root {
        cmd.env("TTVM_TRACE_DIR", root);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // setrlimit(2), which is async-signal-safe, and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: BOUNDED_AS_BYTES,
                rlim_max: BOUNDED_AS_BYTES,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn ttvm");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(BOUNDED_SECONDS)) {
        Ok(output) => output.expect("wait for ttvm"),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not reaped yet (its waiter still waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("ttvm {args:?} still running after {BOUNDED_SECONDS} s: blocked?");
        }
    }
}
