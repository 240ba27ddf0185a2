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
