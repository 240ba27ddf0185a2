//! Real GNU gdb (batch mode) against recorded test guests through `ttvm debug` and
//! `ttvm replay --gdb`: breakpoints, backtraces, registers, globals, stepping both ways,
//! watchpoints both ways, the ends of the recording, and connection handling.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(180);

fn wait_with_deadline(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish in {DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records `guest` with `cmdline` into `dir/name`; returns the trace and its serial output.
fn record(dir: &Path, name: &str, guest_name: &str, cmdline: &str) -> (PathBuf, Output) {
    let trace = dir.join(name);
    let o = run(&[
        "record",
        "-o",
        trace.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--checkpoint-every",
        "2000",
        guest(guest_name).to_str().unwrap(),
    ]);
    (trace, o)
}

/// Runs a gdb script through `ttvm debug`; returns gdb's and ttvm's output.
fn debug(trace: &Path, script: &str) -> String {
    let file = trace.with_extension("gdb");
    std::fs::write(
        &file,
        format!("set pagination off\nset confirm off\n{script}"),
    )
    .unwrap();
    // One file for stdout and stderr: monitor output (stderr) interleaves with the rest.
    let log_path = trace.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = ttvm()
        .args([
            "debug",
            trace.to_str().unwrap(),
            "--serial-out",
            "/dev/null",
            "--",
            "-batch",
            "-nx",
            "-x",
            file.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("ttvm debug");
    wait_with_deadline(child, "ttvm debug");
    std::fs::read_to_string(&log_path).unwrap()
}

/// The text after `mark` (an echoed `##NAME##` line) up to the next mark.
fn section(out: &str, mark: &str) -> String {
    out.split(mark)
        .nth(1)
        .unwrap_or_else(|| panic!("{mark} missing: {out}"))
        .split("\n##")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The recording's length, from the trace's close record.
fn final_position(trace: &Path) -> u64 {
    ttvm_logs::TraceReader::open(trace)
        .unwrap()
        .header()
        .close
        .as_ref()
        .expect("a closed trace")
        .final_position
}

fn race_trace(dir: &Path) -> PathBuf {
    let (trace, o) = record(dir, "race", "race", "");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    trace
}

#[test]
fn break_on_a_function_then_backtrace_registers_and_globals() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    let out = debug(
        &trace,
        "break push_item\ncontinue\nbt\ninfo registers rip\nprint shared.count\n\
         print/x $pc == push_item\ninfo registers\nx/2x 0x7fff00000000\n",
    );
    // Unmapped memory is a gdb error (the batch script stops at it).
    assert!(
        out.contains("Cannot access memory at address 0x7fff00000000"),
        "{out}"
    );
    // Writes are refused, with the reason.
    let refused = debug(&trace, "set var shared.count = 7\n");
    assert!(refused.contains("refusing to write memory"), "{refused}");
    assert!(refused.contains("Cannot access memory"), "{refused}");
    assert!(out.contains("Breakpoint 1, push_item () at"), "{out}");
    assert!(out.contains("race.c:110"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("#1 ") && l.contains("in main")),
        "{out}"
    );
    assert!(out.contains("<push_item>"), "{out}");
    assert!(
        out.contains("$1 = 0"),
        "the first push sees an empty stack: {out}"
    );
    assert!(out.contains("$2 = 0x1"), "{out}");
    // `info registers` shows the machine's mode too.
    for reg in ["rsp", "eflags", "cs", "fs_base", "cr0", "cr3", "efer"] {
        assert!(
            out.lines().any(|l| l.starts_with(reg) && l.contains("0x")),
            "{reg} missing: {out}"
        );
    }
}

/// The general registers printed after each `echo MARK` in `out`, in order.
fn register_dumps(out: &str, mark: &str) -> Vec<String> {
    out.split(mark)
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter(|l| {
                    let name = l.split_whitespace().next().unwrap_or("");
                    [
                        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "eflags",
                    ]
                    .contains(&name)
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn five_stepi_then_five_reverse_stepi_give_the_same_registers() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    let mut script = String::from("break make_item\ncontinue\n");
    for _ in 0..5 {
        script.push_str("echo =FWD=\\n\ninfo registers\nstepi\n");
    }
    script.push_str("echo =FWD=\\n\ninfo registers\n");
    for _ in 0..5 {
        script.push_str("reverse-stepi\necho =BACK=\\n\ninfo registers\n");
    }
    let out = debug(&trace, &script);
    let fwd = register_dumps(&out, "=FWD=");
    let back = register_dumps(&out, "=BACK=");
    assert_eq!(fwd.len(), 6, "{out}");
    assert_eq!(back.len(), 5, "{out}");
    for (i, b) in back.iter().enumerate() {
        assert!(b.contains("rip"), "{out}");
        assert_eq!(*b, fwd[4 - i], "after {} reverse-stepi", i + 1);
    }
    // Stepping moved: not all forward dumps are the same.
    assert_ne!(fwd[0], fwd[5]);
}

/// The line of guest source `file` (relative to the guests' source directory) that
/// holds `text`.
fn source_line(file: &str, text: &str) -> usize {
    let src = std::fs::read_to_string(ttvm_guests::source_dir().join(file)).unwrap();
    src.lines()
        .position(|l| l.contains(text))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{text:?} not in {file}"))
}

/// The source line of the corrupting store in race.c.
fn poison_store_line() -> usize {
    source_line("c/race.c", "shared.items[top] = POISON;")
}

#[test]
fn race_demo_watch_the_corrupted_slot_and_reverse_continue_to_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    // At 20 kHz of virtual time the race window is hit in most runs: find one that panics.
    let mut found = None;
    for i in 0..10 {
        let (trace, o) = record(tmp.path(), &format!("race{i}"), "race", "race.hz=20000");
        if o.status.code() == Some(3) {
            found = Some((trace, stdout(&o)));
            break;
        }
    }
    let (trace, serial) = found.expect("no panicking race run in 10 recordings");
    let slot: u32 = serial
        .split("items[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no corrupted slot in {serial:?}"));
    let out = debug(
        &trace,
        &format!(
            "break exit\ncontinue\nbt 3\nwatch -l shared.items[{slot}]\nreverse-continue\n\
             bt 1\nprint shared.items[{slot}]\n"
        ),
    );
    assert!(out.contains("Breakpoint 1, exit"), "{out}");
    assert!(out.contains("check_stack"), "{out}");
    let line = poison_store_line();
    assert!(out.contains("Hardware watchpoint 2"), "{out}");
    assert!(
        out.contains("in timer_tick (irq=0) at") && out.contains(&format!("race.c:{line}")),
        "reverse-continue must stop at the POISON store, race.c:{line}:\n{out}"
    );
    assert!(out.contains("New value = "), "{out}");
    // Before the store the slot still held the item (not POISON = 3735936685).
    let printed = out
        .lines()
        .rev()
        .find(|l| l.starts_with("$1 = "))
        .expect("print");
    assert_ne!(printed, "$1 = 3735936685", "{out}");
}

#[test]
fn the_ends_of_the_recording_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    let out = debug(
        &trace,
        "break push_item\nreverse-continue\nmonitor when\ncontinue\ndelete\ncontinue\n\
         monitor when\nstepi\nreverse-stepi\nmonitor when\n",
    );
    let ends: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("No more reverse-execution history"))
        .collect();
    // reverse-continue at the start, continue at the end, stepi at the end.
    assert_eq!(ends.len(), 3, "{out}");
    assert!(out.contains("position 0;"), "{out}");
    let final_position = final_position(&trace);
    assert!(
        out.contains(&format!("position {final_position};")),
        "continue runs to the end, position {final_position}: {out}"
    );
    // One reverse-stepi from the end: the state before the last instruction, at the same
    // position (the instruction that ended the guest did not complete a step).
    let whens: Vec<&str> = out.lines().filter(|l| l.starts_with("position ")).collect();
    assert_eq!(whens.len(), 3, "{out}");
    assert!(
        whens[2].starts_with(&format!("position {final_position};")),
        "{out}"
    );
}

#[test]
fn watchpoint_kinds_stop_at_the_right_instruction_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    // `consumed` is read then written by timer_tick (`consumed = consumed + 1`), never by
    // main.
    let out = debug(
        &trace,
        "rwatch consumed\ncontinue\necho ##R1##\\n\nmonitor when\nprint consumed\n\
         delete\nwatch consumed\ncontinue\necho ##W1##\\n\nmonitor when\n\
         delete\nawatch consumed\ncontinue\necho ##A1##\\n\nmonitor when\n\
         reverse-continue\necho ##A0##\\n\nx/i $pc\nmonitor when\n\
         delete\nrwatch consumed\nreverse-continue\necho ##R0##\\n\nx/i $pc\n\
         delete\nwatch consumed\ncontinue\nreverse-continue\necho ##W0##\\n\nx/i $pc\nprint consumed\n",
    );
    let section = |mark: &str| section(&out, mark);
    let position = |s: &str| -> u64 {
        s.split("position ")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no position in {s:?}: {out}"))
    };
    // Forwards: the read of `consumed` (value 0), then its write (0 -> 1), then the next
    // access (the read at the next tick).
    assert!(
        out.contains("Hardware read watchpoint 1: consumed"),
        "{out}"
    );
    assert!(out.contains("Value = 0"), "{out}");
    assert!(
        out.contains("Old value = 0") && out.contains("New value = 1"),
        "{out}"
    );
    let (r1, w1, a1) = (
        position(&section("##R1##")),
        position(&section("##W1##")),
        position(&section("##A1##")),
    );
    assert!(
        r1 < w1 && w1 < a1,
        "read {r1}, write {w1}, next access {a1}: {out}"
    );
    // Backwards: at the accessing instructions themselves.
    let a0 = position(&section("##A0##"));
    assert!(a0 < a1, "{out}");
    for mark in ["##A0##", "##R0##", "##W0##"] {
        assert!(
            section(mark).contains("<consumed>"),
            "{mark}: the instruction at pc must access `consumed`:\n{out}"
        );
    }
}

/// Starts `ttvm replay TRACE --gdb 127.0.0.1:0`; returns the child and its address.
fn start_server(trace: &Path) -> (Child, String) {
    let mut child = ttvm()
        .args([
            "replay",
            trace.to_str().unwrap(),
            "--gdb",
            "127.0.0.1:0",
            "--serial-out",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    let addr = loop {
        assert_eq!(
            err.read(&mut byte).expect("server stderr"),
            1,
            "server died"
        );
        seen.push(byte[0]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(rest) = text.split("target remote ").nth(1) {
            if rest.ends_with('\n') {
                break rest.trim().to_string();
            }
        }
    };
    // Keep draining stderr so the server never blocks on it; a failing test shows it.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("server: {line}");
        }
    });
    (child, addr)
}

fn gdb_batch(addr: &str, commands: &str) -> String {
    let elf = ttvm_guests::elf_path("race").unwrap();
    let mut args = vec![
        "-batch".to_string(),
        "-nx".into(),
        elf.to_str().unwrap().into(),
        "-ex".into(),
        format!("target remote {addr}"),
    ];
    for c in commands.lines() {
        args.push("-ex".into());
        args.push(c.into());
    }
    let child = Command::new("gdb")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb");
    let out = wait_with_deadline(child, "gdb");
    format!("{}\n{}", stdout(&out), stderr(&out))
}

#[test]
fn garbage_second_clients_and_reconnects_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    let (server, addr) = start_server(&trace);

    // Garbage bytes, then hang up.
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.write_all(b"\x00\xffgarbage$$#zz}{\x03\r\n$qSupported#00")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(raw);

    // A first client holds the session; a second one is turned away.
    let mut first = TcpStream::connect(&addr).unwrap();
    first.write_all(b"$?#3f").unwrap();
    let mut reply = [0u8; 64];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = first.read(&mut reply).unwrap();
    assert!(n > 0, "the first client gets answers");
    let mut second = TcpStream::connect(&addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = second.read(&mut reply).unwrap_or(0);
    assert_eq!(n, 0, "the second client is disconnected");
    drop(first);
    std::thread::sleep(Duration::from_millis(300));

    // A real gdb session, disconnected; then another one that ends with kill.
    let out = gdb_batch(
        &addr,
        "break push_item\ncontinue\ninfo registers rip\ndisconnect",
    );
    assert!(out.contains("<push_item>"), "{out}");
    let out = gdb_batch(
        &addr,
        "monitor when\nstepi\nmonitor when\nmonitor info trace\nkill",
    );
    assert!(out.contains("trace: "), "{out}");
    // The second session starts where the first left off, and steps on from there.
    let positions: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("position "))
        .filter_map(|l| l.split(';').next()?.parse().ok())
        .collect();
    assert_eq!(positions.len(), 2, "{out}");
    assert!(positions[0] > 0, "the session state survived: {out}");
    assert_eq!(positions[1], positions[0] + 1, "{out}");
    let status = wait_with_deadline(server, "the server").status;
    assert_eq!(status.code(), Some(0), "the server ends after kill");
}

/// A gdb remote-protocol packet with its checksum.
fn packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Reads from `s` until `want` appears (or the timeout passes); returns what was read.
fn read_until(s: &mut TcpStream, want: &[&str]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // Done once a wanted text arrived with the rest of its packet (`#xx`).
                let text = String::from_utf8_lossy(&got);
                let complete = want.iter().any(|w| {
                    text.find(w)
                        .and_then(|at| text[at..].find('#').map(|h| at + h))
                        .is_some_and(|hash| text.len() >= hash + 3)
                });
                if complete {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn ctrl_c_interrupts_a_long_continue() {
    let tmp = tempfile::tempdir().unwrap();
    // About 160,000 positions: a continue takes seconds.
    let (trace, o) = record(tmp.path(), "long", "race", "race.hz=100 race.jitter=3000");
    assert!(o.status.success(), "{}", stderr(&o));
    let (server, addr) = start_server(&trace);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&packet("QStartNoAckMode")).unwrap();
    read_until(&mut s, &["OK"]);
    s.write_all(b"+").unwrap();
    s.write_all(&packet("vCont;c")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    s.write_all(b"\x03").unwrap();
    let reply = read_until(&mut s, &["T02", "S02"]);
    assert!(
        reply.contains("T02") || reply.contains("S02"),
        "SIGINT stop expected: {reply:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // The replay stopped part-way: not at the end.
    s.write_all(&packet("qRcmd,7768656e")).unwrap(); // "when"
    let when = read_until(&mut s, &["OK"]);
    // Like gdb, wait for the server's answer to the kill (here: it closes the connection)
    // before closing; a client that closes at once can make the server see a broken pipe.
    s.write_all(&packet("vKill;1")).unwrap();
    read_until(&mut s, &["OK"]);
    drop(s);
    let status = wait_with_deadline(server, "the server").status;
    assert_eq!(status.code(), Some(0));
    // Console output comes as `$O<hex>#..` packets.
    let text: String = when
        .split("$O")
        .skip(1)
        .filter_map(|p| p.split('#').next())
        .flat_map(|hex| {
            (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .map(char::from)
                .collect::<Vec<_>>()
        })
        .collect();
    let pos: u64 = text
        .strip_prefix("position ")
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("monitor when: {text:?} ({when:?})"));
    let end = final_position(&trace);
    assert!(pos > 0 && pos < end, "stopped part-way: {pos} of {end}");
}

#[test]
fn next_and_reverse_next_and_reverse_finish_follow_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = race_trace(tmp.path());
    let out = debug(
        &trace,
        "break push_item\ncontinue\ndelete\nnext\nnext\necho ##N2##\\n\nframe\n\
         reverse-next\necho ##RN##\\n\nframe\nreverse-next\nreverse-finish\necho ##RF##\\n\nframe\n",
    );
    let section = |mark: &str| section(&out, mark);
    assert!(section("##N2##").contains("race.c:112"), "{out}");
    assert!(section("##RN##").contains("race.c:111"), "{out}");
    let rf = section("##RF##");
    // The first call: the loop that fills the stack before the timer starts.
    let call = source_line("c/race.c", "while (shared.count < RACE_LEVEL)") + 1;
    assert!(
        rf.contains("main (") && rf.contains(&format!("race.c:{call}")),
        "{out}"
    );
}

#[test]
fn a_32_bit_guest_gets_i386_registers_breakpoints_and_reverse_watchpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, o) = record(tmp.path(), "h32", "hello32", "");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = debug(
        &trace,
        "break visit\ncontinue\ncontinue\nbt\ninfo registers eip\nprint path[0]\nprint total\n\
         watch total\ncontinue\necho ##BACK##\\n\nreverse-continue\necho ##REGS##\\n\n\
         info registers\n",
    );
    // gdb accepted the description (no "not compatible", no 'g' packet size complaint).
    assert!(!out.contains("not compatible"), "{out}");
    assert!(!out.contains("packet reply is too long"), "{out}");
    assert!(!out.contains("internal-error"), "{out}");
    assert!(out.contains("Breakpoint 1, visit (k=1) at"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("#1 ") && l.contains("in main32")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("eip ") && l.contains("<visit>")),
        "{out}"
    );
    assert!(out.contains("= {x = 0, y = 0}"), "{out}");
    // Forward: the store of visit(1) changes total from 0 to 1.
    let forward = section(&out, "##BACK##");
    let before = out.split("##BACK##").next().unwrap();
    assert!(before.contains("Old value = 0\nNew value = 1"), "{out}");
    // Backward: reverse-continue stops at that store, on its source line.
    assert!(forward.contains("Old value = 1\nNew value = 0"), "{out}");
    let store = source_line("c32/hello32.c", "total += ");
    assert!(
        forward.contains(&format!("hello32.c:{store}")),
        "expected line {store}: {forward}"
    );
    let regs = section(&out, "##REGS##");
    for reg in [
        "eax", "esp", "eip", "eflags", "cs", "fs_base", "cr0", "efer",
    ] {
        assert!(
            regs.lines().any(|l| l.starts_with(reg) && l.contains("0x")),
            "{reg} missing: {regs}"
        );
    }
    assert!(!regs.contains("rax"), "{regs}");
}
