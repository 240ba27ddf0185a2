//! A real, unpatched Linux kernel (6.1 tinyconfig + KUnit, built by guests/linux/build.sh
//! and cached per machine) under `ttvm run`, `ttvm run --clock singlestep`, `ttvm record`
//! and `ttvm replay`. Each test takes seconds (free runs) to a few minutes (~15 M single
//! steps); they run in parallel with each other.
//!
//! The first run on a machine builds the kernel (apt-get installs linux-source-6.1 and the
//! build tools; ~5 minutes on 2 cores). `TTVM_SKIP_LINUX=1` skips these tests with a
//! visible line (for quick local runs; CI never sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The KUnit suites built into the test kernel (guests/linux/config.fragment), in the
/// order they run.
const SUITES: &[&str] = &[
    "example",
    "bitfields",
    "list-kunit-test",
    "hlist",
    "cmdline",
];

fn skipped(test: &str) -> bool {
    if std::env::var_os("TTVM_SKIP_LINUX").is_some() {
        eprintln!("SKIPPED {test}: TTVM_SKIP_LINUX is set");
        return true;
    }
    false
}

fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guests/linux")
        .join(name);
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({:?}):\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The test kernel (built once per machine, then cached).
fn vmlinux() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| PathBuf::from(script("build.sh", &[])))
}

fn cmdline(workload: &str) -> String {
    script("build.sh", &["--cmdline", workload])
}

fn initramfs() -> PathBuf {
    PathBuf::from(script("initramfs.sh", &[]))
}

/// Asserts that the serial output shows every KUnit suite passing, and nothing failing.
fn assert_kunit_passed(serial: &str) {
    // The kernel's serial console ends lines with CR LF.
    let serial = &serial.replace('\r', "");
    for (i, suite) in SUITES.iter().enumerate() {
        let line = format!("\nok {} {suite}\n", i + 1);
        assert!(serial.contains(&line), "no `{}` in:\n{serial}", line.trim());
    }
    assert!(!serial.contains("not ok"), "a KUnit test failed:\n{serial}");
    assert!(
        serial.contains("reboot: Restarting system"),
        "no reboot after the suites:\n{serial}"
    );
}

/// `ttvm ARGS... vmlinux` with the guest's serial output in `serial`; returns (status,
/// serial text, stderr).
fn ttvm_on_kernel(args: &[&str], serial: &Path) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--serial-out", serial.to_str().unwrap()]);
    all.push(vmlinux().to_str().unwrap());
    let o = run(&all);
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    (o.status.code(), text, stderr(&o))
}

#[test]
fn kunit_boot_runs_free_and_every_suite_passes() {
    if skipped("kunit_boot_runs_free_and_every_suite_passes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("serial");
    let line = cmdline("kunit");
    let (status, text, err) = ttvm_on_kernel(&["run", "--cmdline", &line], &serial);
    assert_eq!(status, Some(123), "expected the i8042 reset: {err}\n{text}");
    assert!(err.contains("guest reset the machine"), "{err}");
    assert_kunit_passed(&text);
    // No APIC option on the command line: Linux found no local APIC and kept the PICs.
    assert!(!line.contains("apic"), "{line}");
    assert!(text.contains("APIC: Keep in PIC mode(8259)"), "{text}");
}

/// `ttvm doctor`'s line for `check` says "broken".
fn doctor_says_broken(check: &str) -> bool {
    static DOCTOR: OnceLock<String> = OnceLock::new();
    DOCTOR
        .get_or_init(|| stdout(&run(&["doctor"])))
        .lines()
        .any(|l| l.contains(check) && l.contains("broken"))
}

/// The initramfs boot reaches /init. Where user-mode SYSCALL works (`ttvm doctor`), /init
/// prints and reboots; on a KVM where it does not (kvm_pvm expects guests written for it),
/// the first system call faults at the kernel's SYSCALL entry, which is what must be seen.
#[test]
fn initramfs_reaches_user_space_in_a_free_run() {
    if skipped("initramfs_reaches_user_space_in_a_free_run") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("serial");
    let initrd = initramfs();
    let line = cmdline("initrd");
    let (status, text, err) = ttvm_on_kernel(
        &[
            "run",
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            &line,
        ],
        &serial,
    );
    assert_eq!(status, Some(123), "{err}\n{text}");
    assert!(text.contains("Run /init as init process"), "{text}");
    if doctor_says_broken("user-mode SYSCALL") {
        eprintln!("NOTE: this KVM cannot deliver a stock kernel's user-mode SYSCALL (ttvm doctor)");
        assert!(text.contains("init[1]: segfault at ffffffff81"), "{text}");
        assert!(text.contains("Attempted to kill init"), "{text}");
    } else {
        assert!(
            text.contains("ttvm-init: hello from user space (pid 1)"),
            "{text}"
        );
        assert!(text.contains("ttvm-init: uname Linux"), "{text}");
        assert!(text.contains("ttvm-init: release 6.1."), "{text}");
    }
}

/// `replay --verify --json` of `trace`: (serial bytes, the JSON summary).
fn verify(trace: &Path, serial: &Path) -> (Vec<u8>, serde_json::Value) {
    let o = run(&[
        "replay",
        "--verify",
        "--json",
        "--no-progress",
        "--serial-out",
        serial.to_str().unwrap(),
        trace.to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (std::fs::read(serial).unwrap(), json)
}

fn goto(trace: &Path, position: u64) -> serde_json::Value {
    let o = run(&[
        "replay",
        "--goto",
        &position.to_string(),
        "--json",
        trace.to_str().unwrap(),
    ]);
    let mut json: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    // Timing and how it got there differ between seeks; where it is must not.
    for volatile in ["seconds", "restores", "steps_replayed"] {
        json.as_object_mut().unwrap().remove(volatile);
    }
    json
}

#[test]
fn kunit_boot_records_and_replays_exactly() {
    if skipped("kunit_boot_records_and_replays_exactly") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace");
    let line = cmdline("kunit");
    let (status, recorded, err) = ttvm_on_kernel(
        &[
            "record",
            "--no-progress",
            "-o",
            trace.to_str().unwrap(),
            "--cmdline",
            &line,
        ],
        &tmp.path().join("recorded"),
    );
    assert_eq!(status, Some(123), "{err}");
    assert_kunit_passed(&recorded);
    let header = ttvm_logs::TraceReader::open(&trace)
        .unwrap()
        .header()
        .clone();
    let close = header.close.expect("a closed trace");
    assert!(
        matches!(
            &header.clock.params,
            ttvm_logs::ClockParams::Singlestep(p) if p.step_merges.is_some()
        ),
        "{:?}",
        header.clock.params
    );

    // Two replays: the same serial bytes as the recording, the same end and digest.
    let mut digests = Vec::new();
    for i in 0..2 {
        let (serial, json) = verify(&trace, &tmp.path().join(format!("replay{i}")));
        assert_eq!(json["result"], "reproduced", "{json}");
        assert_eq!(json["position"], close.final_position, "{json}");
        assert_eq!(String::from_utf8_lossy(&serial), recorded, "replay {i}");
        digests.push(json["final_digest"].clone());
    }
    assert_eq!(digests[0], digests[1]);

    // Seeking twice to just before and just after a timer interrupt lands on the same
    // registers each time.
    let mut reader = ttvm_logs::TraceReader::open(&trace).unwrap();
    let interrupts: Vec<u64> = reader
        .events()
        .filter_map(Result::ok)
        .filter(|r| matches!(r.event, ttvm_logs::Event::Interrupt { vector: 0x30 }))
        .map(|r| r.position)
        .collect();
    assert!(
        interrupts.len() > 100,
        "{} timer interrupts",
        interrupts.len()
    );
    let at = interrupts[interrupts.len() / 2];
    for position in [at, at + 1] {
        let first = goto(&trace, position);
        assert_eq!(first["position"], position, "{first}");
        assert_eq!(goto(&trace, position), first, "seek to {position}");
    }

    // Jump to a KUnit result line (the index is built by one more replay): the kernel's
    // 8250 driver is writing that line's first byte to the UART, and the console output
    // before it ends exactly before the line.
    let before = tmp.path().join("before");
    let o = run(&[
        "replay",
        trace.to_str().unwrap(),
        "--goto-output",
        "^ok [0-9]+ ",
        "--nth",
        "2",
        "--json",
        "--no-progress",
        "--serial-out",
        before.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    let line = json["output_line"]["text"].as_str().unwrap().to_string();
    assert!(line.starts_with("ok "), "{json}");
    let before = std::fs::read_to_string(&before).unwrap();
    assert!(recorded.starts_with(&before), "{json}");
    assert!(recorded[before.len()..].starts_with(&line), "{json}");
    let reg = |name: &str| {
        let v = json["registers"][name].as_str().unwrap();
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    };
    assert_eq!(reg("rdx") & 0xffff, 0x3f8, "{json}");
    assert_eq!(reg("rax") & 0xff, u64::from(b'o'), "{json}");
    // The instruction there, by objdump: the OUT of the 8250 driver's port accessor.
    let rip = reg("rip");
    let objdump = std::process::Command::new("objdump")
        .arg("-d")
        .arg(format!("--start-address={rip:#x}"))
        .arg(format!("--stop-address={:#x}", rip + 1))
        .arg(vmlinux())
        .output()
        .expect("objdump (binutils) runs");
    let code = String::from_utf8_lossy(&objdump.stdout).into_owned();
    assert!(code.contains("out    %al,(%dx)"), "{rip:#x}: {code}");
    assert!(code.contains("<io_serial_out"), "{rip:#x}: {code}");
}

/// Where this KVM cannot single-step user mode (`ttvm doctor` says so), recording the
/// initramfs boot stops with a clear error when /init starts, and the trace replays to the
/// same stop with the same error; where it can, the whole boot records and replays.
#[test]
fn recording_user_space_stops_clearly_or_replays() {
    if skipped("recording_user_space_stops_clearly_or_replays") {
        return;
    }
    let cpl3_broken = doctor_says_broken("single-step at CPL3");
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace");
    let initrd = initramfs();
    let line = cmdline("initrd");
    let (status, text, err) = ttvm_on_kernel(
        &[
            "record",
            "--no-progress",
            "--initrd",
            initrd.to_str().unwrap(),
            "-o",
            trace.to_str().unwrap(),
            "--cmdline",
            &line,
        ],
        &tmp.path().join("recorded"),
    );
    let header = ttvm_logs::TraceReader::open(&trace)
        .unwrap()
        .header()
        .clone();
    let embedded = header.initrd.expect("the initrd is embedded in the trace");
    assert_eq!(embedded.size, std::fs::metadata(&initrd).unwrap().len());
    if cpl3_broken {
        assert_eq!(status, Some(120), "{err}\n{text}");
        assert!(err.contains("the guest entered user mode (CPL 3)"), "{err}");
        assert!(text.contains("Run /init as init process"), "{text}");
        assert!(!text.contains("ttvm-init: hello"), "{text}");
        // The replay reproduces the same output up to the same stop, with the same error.
        let replayed = tmp.path().join("replayed");
        let o = run(&[
            "replay",
            "--no-progress",
            "--serial-out",
            replayed.to_str().unwrap(),
            trace.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
        let rip = err
            .split(" at RIP ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("the RIP in the error");
        assert!(
            stderr(&o).contains(&format!("entered user mode (CPL 3) at RIP {rip}")),
            "{}",
            stderr(&o)
        );
        assert_eq!(std::fs::read_to_string(&replayed).unwrap(), text);
    } else {
        assert_eq!(status, Some(123), "{err}\n{text}");
        assert!(
            text.contains("ttvm-init: hello from user space (pid 1)"),
            "{text}"
        );
        let (serial, json) = verify(&trace, &tmp.path().join("replay"));
        assert_eq!(json["result"], "reproduced", "{json}");
        assert_eq!(String::from_utf8_lossy(&serial), text);
    }
}
