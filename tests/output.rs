//! Jumping to what the guest printed (`replay --goto-output`, gdb's `monitor output`,
//! `monitor goto-output`, `monitor serial`) and the guest's console while gdb moves
//! forward, on recordings of the `hello` test guest, with the real ttvm binary and GNU gdb.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CMDLINE: &str = "one two";

/// Records `hello`; returns the trace and what it printed.
fn hello_trace(dir: &Path) -> (PathBuf, String) {
    let trace = dir.join("hello");
    let o = run(&[
        "record",
        "-o",
        trace.to_str().unwrap(),
        "--cmdline",
        CMDLINE,
        "--checkpoint-every",
        "1000",
        guest("hello").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (trace, stdout(&o))
}

/// `replay --goto-output PATTERN [--nth N] --json --serial-out FILE`: (JSON, FILE).
fn goto_output(trace: &Path, pattern: &str, nth: Option<&str>) -> (serde_json::Value, String) {
    let before = trace.with_extension("before");
    let mut args = vec![
        "replay",
        trace.to_str().unwrap(),
        "--goto-output",
        pattern,
        "--json",
        "--no-progress",
        "--serial-out",
        before.to_str().unwrap(),
    ];
    if let Some(n) = nth {
        args.extend(["--nth", n]);
    }
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (json, std::fs::read_to_string(&before).unwrap())
}

fn hex(v: &serde_json::Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The instruction at `addr` of the hello guest and the function it is in, by objdump.
fn instruction_at(addr: u64) -> String {
    let o = Command::new("objdump")
        .args([
            "-d",
            &format!("--start-address={addr:#x}"),
            &format!("--stop-address={:#x}", addr + 1),
            guest("hello").to_str().unwrap(),
        ])
        .output()
        .expect("objdump (binutils, which builds the test guests)");
    stdout(&o)
}

#[test]
fn goto_output_stops_at_the_out_that_writes_the_first_byte_of_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, printed) = hello_trace(tmp.path());
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[1], format!("cmdline: {CMDLINE}"));

    let mut positions = Vec::new();
    for (k, pattern) in ["^hello from", "^cmdline: ", "KiB$"].iter().enumerate() {
        let (json, before) = goto_output(&trace, pattern, None);
        let line = &json["output_line"];
        assert_eq!(line["line"], k + 1, "{json}");
        assert_eq!(line["text"], lines[k], "{json}");
        // The output written before this instruction ends exactly before the line.
        let offset: usize = lines[..k].iter().map(|l| l.len() + 1).sum();
        assert_eq!(before, printed[..offset], "{json}");
        assert_eq!(line["offset"], offset, "{json}");
        // The instruction is the OUT in the runtime's serial_putc, writing that byte.
        let rip = hex(&json["registers"]["rip"]);
        let code = instruction_at(rip);
        assert!(code.contains("<serial_putc+"), "{rip:#x}: {code}");
        assert!(code.contains("out    %al,(%dx)"), "{rip:#x}: {code}");
        assert_eq!(hex(&json["registers"]["rdx"]), 0x3f8, "{json}");
        assert_eq!(
            hex(&json["registers"]["rax"]) & 0xff,
            u64::from(lines[k].as_bytes()[0]),
            "{json}"
        );
        positions.push(json["position"].as_u64().unwrap());
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // The cache was written by the first use.
    assert!(trace.join("output.idx").is_file());

    // The Nth match: every line matches `.`, lines 1 and 3 match `o` ("hello from",
    // "memory") and line 2 does not.
    let (json, _) = goto_output(&trace, ".", Some("3"));
    assert_eq!(json["position"].as_u64(), Some(positions[2]), "{json}");
    assert_eq!(json["output_line"]["match"], 3, "{json}");
    let (json, _) = goto_output(&trace, "o[^n]", Some("2"));
    assert_eq!(json["output_line"]["line"], 3, "{json}");

    // The text form says where it is and which line.
    let o = run(&[
        "replay",
        trace.to_str().unwrap(),
        "--goto-output",
        "cmdline",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("position {}\n", positions[1])),
        "{text}"
    );
    assert!(
        text.contains("first byte of output line 2 (match 1): cmdline: one two"),
        "{text}"
    );
    assert!(text.contains("rip 0x"), "{text}");
}

#[test]
fn goto_output_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, _) = hello_trace(tmp.path());
    let t = trace.to_str().unwrap();
    let o = run(&["replay", t, "--goto-output", "(unclosed"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bad regular expression \"(unclosed\""),
        "{}",
        stderr(&o)
    );
    let o = run(&["replay", t, "--goto-output", "no such line"]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no line of the guest's output matches \"no such line\" (3 lines)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["replay", t, "--goto-output", "o[^n]", "--nth", "9"]);
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only 2 lines of the guest's output match \"o[^n]\", not 9"),
        "{}",
        stderr(&o)
    );
    for bad in [
        vec!["--goto-output", "o", "--nth", "0"],
        vec!["--nth", "2"],
        vec!["--goto-output", "o", "--goto", "5"],
    ] {
        let mut args = vec!["replay", t];
        args.extend(bad.iter().copied());
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

/// Runs a gdb script through `ttvm debug TRACE --serial-out SERIAL`; returns what gdb and
/// ttvm printed.
fn debug(trace: &Path, serial: &Path, script: &str) -> String {
    let file = trace.with_extension("gdb");
    std::fs::write(
        &file,
        format!("set pagination off\nset confirm off\n{script}"),
    )
    .unwrap();
    let log_path = trace.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = ttvm()
        .args(["debug", trace.to_str().unwrap(), "--serial-out"])
        .arg(serial)
        .args(["--", "-batch", "-nx", "-x"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("ttvm debug");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!(
                "ttvm debug hangs: {}",
                std::fs::read_to_string(&log_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&log_path).unwrap()
}

/// The lines of `monitor output` in `out`: (N, position, text).
fn listed(out: &str) -> Vec<(usize, u64, String)> {
    out.lines()
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(' ')?;
            let (pos, text) = rest.trim_start().split_once("  ")?;
            Some((n.parse().ok()?, pos.parse().ok()?, text.to_string()))
        })
        .collect()
}

#[test]
fn monitor_output_lists_lines_that_goto_output_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, printed) = hello_trace(tmp.path());
    let serial = tmp.path().join("serial");
    let out = debug(
        &trace,
        &serial,
        "echo ##ALL##\\n\nmonitor output\necho ##MATCH##\\n\nmonitor output o[^n]\n\
         echo ##GOTO##\\n\nmonitor goto-output o[^n] 2\nmaintenance flush register-cache\n\
         info symbol $pc\nx/i $pc\np/c $al\nmonitor when\n\
         echo ##CONSOLE##\\n\nmonitor serial\necho ##BAD##\\n\nmonitor goto-output (\n\
         monitor goto-output nothing like this\nmonitor goto-output o 7\n\
         echo ##STEP##\\n\nstepi\nshell cp @SERIAL@ @SERIAL@.step\n\
         continue\necho ##END##\\n\n"
            .replace("@SERIAL@", serial.to_str().unwrap())
            .as_str(),
    );
    let section = |mark: &str| {
        out.split(mark)
            .nth(1)
            .unwrap_or_else(|| panic!("{mark} missing: {out}"))
            .split("##")
            .next()
            .unwrap()
            .to_string()
    };
    let all = listed(&section("##ALL##"));
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(all.len(), 3, "{out}");
    for (k, (n, _, text)) in all.iter().enumerate() {
        assert_eq!((*n, text.as_str()), (k + 1, lines[k]), "{out}");
    }
    // The same positions as the command line's --goto-output.
    for (n, pos, _) in &all {
        let (json, _) = goto_output(&trace, ".", Some(&n.to_string()));
        assert_eq!(json["position"].as_u64(), Some(*pos), "line {n}: {json}");
    }
    let matching = listed(&section("##MATCH##"));
    assert_eq!(
        matching,
        vec![
            (1, all[0].1, all[0].2.clone()),
            (2, all[2].1, all[2].2.clone())
        ],
        "{out}"
    );
    // goto-output moved to the OUT that writes the 'm' of "memory".
    let goto = section("##GOTO##");
    assert!(
        goto.contains(&format!(
            "at position {}: the instruction that wrote",
            all[2].1
        )),
        "{out}"
    );
    assert!(goto.contains("serial_putc"), "{out}");
    assert!(goto.contains("out    %al,(%dx)"), "{out}");
    assert!(goto.contains("'m'"), "{out}");
    assert!(goto.contains(&format!("position {};", all[2].1)), "{out}");
    // `monitor serial`: the output written before here.
    let offset = lines[0].len() + lines[1].len() + 2;
    let serial_section = section("##CONSOLE##");
    assert!(serial_section.contains(&printed[..offset]), "{out}");
    assert!(
        serial_section.contains(&format!(
            "({offset} bytes written before position {})",
            all[2].1
        )),
        "{out}"
    );
    let bad = section("##BAD##");
    assert!(
        bad.contains("goto-output: bad regular expression \"(\""),
        "{out}"
    );
    assert!(
        bad.contains("no line of the guest's output matches \"nothing like this\""),
        "{out}"
    );
    assert!(
        bad.contains("only 3 lines of the guest's output match \"o\", not 7"),
        "{out}"
    );
    assert!(out.contains("##END##"), "{out}");
    // The jump showed nothing; the step executed the OUT and showed its byte; continuing
    // showed the rest.
    assert_eq!(
        std::fs::read_to_string(serial.with_extension("step")).unwrap(),
        "m"
    );
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), printed[offset..]);
}

#[test]
fn the_console_shows_what_continuing_executes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, printed) = hello_trace(tmp.path());
    let serial = tmp.path().join("serial");
    let out = debug(
        &trace,
        &serial,
        "break pvh_cmdline\ncontinue\nshell cp @SERIAL@ @SERIAL@.first\n\
         reverse-continue\ncontinue\nshell cp @SERIAL@ @SERIAL@.again\n\
         delete\ncontinue\necho ##END##\\n\n"
            .replace("@SERIAL@", serial.to_str().unwrap())
            .as_str(),
    );
    assert!(out.contains("##END##"), "{out}");
    let first_line = printed.lines().next().unwrap();
    // At pvh_cmdline the guest has printed its first line: exactly that was shown.
    let first = std::fs::read_to_string(serial.with_extension("first")).unwrap();
    assert_eq!(first, format!("{first_line}\n"), "{out}");
    // Back and forward again over it: not shown twice.
    let again = std::fs::read_to_string(serial.with_extension("again")).unwrap();
    assert_eq!(again, first, "{out}");
    // On to the end: the whole recording's output, once.
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), printed, "{out}");
}
