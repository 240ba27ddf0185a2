//! `ttvm conformance`: for every bundled guest, `run`, `record`, `replay` twice, and
//! compare serial bytes, exit status, final position and final digest. Meant to be run on
//! every KVM ttvm supports (see `tools/svm-conformance.sh` for real hardware-virtualization
//! KVM); it drives this very binary as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use ttvm_logs::{Event, TraceReader};

/// `ttvm conformance`
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the traces and outputs in DIR (default: a temporary directory, removed).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Also replay the trace in DIR, recorded elsewhere: it must replay exactly or be
    /// refused up front with a reason, never diverge.
    #[arg(long, value_name = "DIR")]
    pub foreign_trace: Option<PathBuf>,
    /// Print every command on stderr before it runs (to see where a host hangs).
    #[arg(long)]
    pub verbose: bool,
}

/// `--verbose`: every command is printed before it runs.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

const ECHO_INPUT: &[u8] = b"conformance input\nsecond line\n";

#[derive(Debug, Serialize)]
struct GuestResult {
    guest: String,
    run_status: Option<i32>,
    record_status: Option<i32>,
    record_seconds: f64,
    replay_seconds: f64,
    steps: u64,
    trace_bytes: u64,
    /// The pmu clock (software counter) run: final ticks, or None if skipped or failed.
    pmu_ticks: Option<u64>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    kvm_module: String,
    cpu: String,
    guests: Vec<GuestResult>,
    foreign_trace: Option<String>,
    passed: bool,
}

struct Outcome {
    status: Option<i32>,
    serial: Vec<u8>,
    stdout: String,
    stderr: String,
    seconds: f64,
}

/// Longest a single run/record/replay of a test guest may take before it counts as hung
/// (they take seconds even on emulated hardware virtualization).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs this binary with `args`; output goes to files (no pipe can fill up), and a command
/// that exceeds `COMMAND_TIMEOUT` is killed and reported as hung.
fn ttvm(args: &[&str], serial_out: &Path) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("cannot find the ttvm binary")?;
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("ttvm conformance:   ttvm {}", args.join(" "));
    }
    let started = Instant::now();
    let _ = std::fs::remove_file(serial_out);
    let out_path = serial_out.with_extension("stdout");
    let err_path = serial_out.with_extension("stderr");
    let mut child = Command::new(exe)
        .args(args)
        .arg("--serial-out")
        .arg(serial_out)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("cannot run ttvm")?;
    let mut hang = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status.code();
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            hang = Some(where_stuck(child.id()));
            let _ = child.kill();
            // A task stuck in the kernel may not die: never block on it.
            let killed = Instant::now();
            while killed.elapsed() < Duration::from_secs(10) {
                if child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait()?.is_none() {
                hang = hang.map(|h| h + "\n(still alive 10 s after SIGKILL: stuck in the kernel)");
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if let Some(hang) = hang {
        stderr.push_str(&format!(
            "\nttvm conformance: `ttvm {}` hung: killed after {} s; where it was:\n{hang}",
            args.join(" "),
            COMMAND_TIMEOUT.as_secs()
        ));
    }
    Ok(Outcome {
        status,
        serial: std::fs::read(serial_out).unwrap_or_default(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the kernel says about a hung process and its threads: state, wait channel, the
/// system call in progress and the kernel stack (when readable), to tell a ttvm bug from a
/// task stuck in KVM_RUN.
fn where_stuck(pid: u32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for task in tasks {
        let read = |f: &str| std::fs::read_to_string(task.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("State: ?")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "  task {}: {state}; wchan {}; syscall {}\n",
            task.file_name().unwrap_or_default().to_string_lossy(),
            read("wchan").trim(),
            read("syscall").split_whitespace().next().unwrap_or("?"),
        ));
        for line in read("stack").lines().take(12) {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// The trace's final position and final digest.
fn recorded_final(trace: &Path) -> anyhow::Result<(u64, String)> {
    let mut reader = TraceReader::open(trace)?;
    let position = reader
        .header()
        .close
        .as_ref()
        .map(|c| c.final_position)
        .context("the trace was not closed")?;
    let mut digest = None;
    for rec in reader.events() {
        if let Event::StateDigest { digest: d } = rec?.event {
            digest = Some(d);
        }
    }
    let digest = digest.context("the trace has no final digest")?;
    Ok((position, format!("{digest:#018x}")))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn check_guest(work: &Path, name: &str) -> anyhow::Result<GuestResult> {
    let image = ttvm_guests::elf_bytes(name).context("bundled guest missing")?;
    let elf = work.join(format!("{name}.elf"));
    std::fs::write(&elf, image)?;
    let input = work.join("echo-input");
    std::fs::write(&input, ECHO_INPUT)?;
    let elf_s = elf.to_string_lossy().into_owned();
    let input_s = input.to_string_lossy().into_owned();
    let trace = work.join(format!("{name}-trace"));
    let trace_s = trace.to_string_lossy().into_owned();
    let mut problems = Vec::new();

    let mut run_args = vec!["run"];
    // Checkpoints every 1500 positions: the seek check below restores them.
    let mut rec_args = vec![
        "record",
        "--no-progress",
        "--checkpoint-every",
        "1500",
        "-o",
        &trace_s,
    ];
    if name == ttvm_guests::FAULTS {
        // Its checks need the virtual TSC: a free run reads the host's, where an exception
        // the VMM delivers takes long enough to look like an unseen read.
        run_args.extend(["--clock", "singlestep"]);
    }
    if name == "echo" {
        run_args.extend(["--serial-in", &input_s]);
        rec_args.extend(["--serial-in", &input_s]);
    }
    run_args.push(&elf_s);
    rec_args.push(&elf_s);

    let run = ttvm(&run_args, &work.join(format!("{name}.run.out")))?;
    let rec = ttvm(&rec_args, &work.join(format!("{name}.rec.out")))?;
    for o in [&run, &rec] {
        if o.status.is_none() {
            problems.push(o.stderr.lines().last().unwrap_or_default().to_string());
        }
    }
    if !rec.stderr.contains("ttvm: trace:") {
        problems.push(format!("record failed: {}", rec.stderr.trim()));
    }
    let expected_status = match name {
        "hello" | "echo" | "entropy" | "rtc" | "fences" | "faults" | "hello32" => Some(0),
        "timer" => Some(10),
        "crash" => Some(121),
        _ => None,
    };
    if let Some(status) = expected_status {
        for (what, got) in [("run", run.status), ("record", rec.status)] {
            if got != Some(status) {
                problems.push(format!("{what} exited with {got:?}, expected {status}"));
            }
        }
    }
    // The recording must have seen every time-stamp read, including those right after
    // instructions this KVM runs together with the next one in a single step.
    if name == ttvm_guests::FENCES && !String::from_utf8_lossy(&rec.serial).contains("fences: ok") {
        problems.push("record: a time-stamp read ran unseen (no `fences: ok`)".to_string());
    }
    let faults_unseen = name == ttvm_guests::FAULTS && exception_handlers_unseen();
    if faults_unseen {
        // Where hardware breakpoints do not fire, the handlers of #DE, #GP and #PF run
        // inside one step (`ttvm doctor` warns): their reads come from the host, so the
        // guest fails and replays diverge. What the VMM delivers itself must still be seen.
        eprintln!(
            "ttvm conformance: faults: exception handlers run inside one step on this KVM \
             (its hardware breakpoints do not fire); checking only #BP and #UD, which ttvm \
             delivers itself"
        );
        problems.retain(|p| !p.starts_with("record exited") && !p.starts_with("run exited"));
        problems.extend(unseen_fault_reads(&rec.serial, &["#BP", "#UD"]));
    } else if name == ttvm_guests::FAULTS
        && !String::from_utf8_lossy(&rec.serial).contains("faults: ok")
    {
        problems.push(
            "record: an exception handler's time-stamp read ran unseen (no `faults: ok`)"
                .to_string(),
        );
    }
    let (position, digest) = match recorded_final(&trace) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("cannot read the trace: {e:#}"));
            (0, String::new())
        }
    };
    let mut replay_seconds = 0.0;
    if !faults_unseen {
        let (seconds, replay_problems) =
            check_replays(work, name, &trace, &rec, (position, &digest), 2)?;
        replay_seconds = seconds;
        problems.extend(replay_problems);
        if let Err(e) = check_seek(work, name, &trace) {
            problems.push(format!("seek: {e:#}"));
        }
    }
    let pmu_ticks = match check_pmu_clock(work, name) {
        Ok((ticks, found)) => {
            let failed = !found.is_empty();
            problems.extend(found.into_iter().map(|p| format!("pmu clock: {p}")));
            ticks.filter(|_| !failed)
        }
        Err(e) => {
            problems.push(format!("pmu clock: {e:#}"));
            None
        }
    };
    Ok(GuestResult {
        guest: name.to_string(),
        run_status: run.status,
        record_status: rec.status,
        record_seconds: rec.seconds,
        replay_seconds,
        steps: position,
        trace_bytes: dir_size(&trace),
        pmu_ticks,
        problems,
    })
}

/// Whether this host's KVM runs exception handlers inside the faulting instruction's single
/// step (trap-flag single-step without working hardware breakpoints).
fn exception_handlers_unseen() -> bool {
    use ttvm_vmm::host::kvm::{kvm_device_path, open_kvm, RUN_REQUIREMENTS};
    open_kvm(&kvm_device_path(), RUN_REQUIREMENTS)
        .ok()
        .and_then(|kvm| ttvm_vmm::host::step_probe::probe(&kvm).ok())
        .is_some_and(|s| s.rearm_each_step && !s.exception_breakpoints)
}

/// Problems with the `faults` guest's lines for `cases`: each must be there with a delta of
/// virtual time (a read the recording saw), not the host's TSC.
fn unseen_fault_reads(serial: &[u8], cases: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(serial);
    cases
        .iter()
        .filter_map(|case| {
            let delta = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{case}: +")))
                .and_then(|d| d.parse::<u64>().ok());
            match delta {
                Some(d) if d < 1_000_000 => None,
                Some(d) => Some(format!(
                    "record: the {case} handler's time-stamp read ran unseen (+{d})"
                )),
                None => Some(format!("record: no `{case}: +N` line")),
            }
        })
        .collect()
}

/// Replays `trace` `times` times: serial output, exit status, final position and digest
/// must be the recording's (`position`, `digest`). Returns the mean replay time and the problems found.
fn check_replays(
    work: &Path,
    name: &str,
    trace: &Path,
    rec: &Outcome,
    (position, digest): (u64, &str),
    times: usize,
) -> anyhow::Result<(f64, Vec<String>)> {
    let mut problems = Vec::new();
    let mut replay_seconds = 0.0;
    for i in 0..times {
        let out = work.join(format!("{name}.replay{i}.out"));
        let rep = ttvm(&["replay", "--json", &trace.to_string_lossy()], &out)?;
        replay_seconds += rep.seconds / times as f64;
        if rep.serial != rec.serial {
            problems.push(format!(
                "replay {i}: serial output differs from the recording"
            ));
        }
        if rep.status != rec.status {
            problems.push(format!(
                "replay {i}: exit status {:?}, recorded {:?}",
                rep.status, rec.status
            ));
        }
        match serde_json::from_str::<serde_json::Value>(rep.stdout.trim()) {
            Ok(v) => {
                if v["result"] != "reproduced" {
                    problems.push(format!("replay {i}: {}", rep.stdout.trim()));
                }
                if v["position"] != position {
                    problems.push(format!(
                        "replay {i}: final position {} != recorded {position}",
                        v["position"]
                    ));
                }
                if v["final_digest"] != digest {
                    problems.push(format!(
                        "replay {i}: final digest {} != recorded {digest}",
                        v["final_digest"]
                    ));
                }
            }
            Err(_) => problems.push(format!(
                "replay {i} failed: {} {}",
                rep.stdout.trim(),
                rep.stderr.trim()
            )),
        }
    }
    Ok((replay_seconds, problems))
}

/// The pmu clock's loop with the software branch counter (every host has it): record and
/// replay must agree. Guests reading the TSC are skipped (the pmu clock cannot record it);
/// race gets a fixed seed and a fast timer, so its interrupts land while it computes and
/// the replay converges to those stops.
fn check_pmu_clock(work: &Path, name: &str) -> anyhow::Result<(Option<u64>, Vec<String>)> {
    let extra: &[&str] = match name {
        "entropy" | "fences" | "faults" => return Ok((None, Vec::new())),
        "race" => &[
            "--time-rate",
            "1000",
            "--cmdline",
            "race.seed=7 race.hz=20000",
        ],
        _ => &[],
    };
    let elf = work
        .join(format!("{name}.elf"))
        .to_string_lossy()
        .into_owned();
    let input = work.join("echo-input").to_string_lossy().into_owned();
    let trace = work.join(format!("{name}-pmu-trace"));
    let trace_s = trace.to_string_lossy().into_owned();
    let mut args = vec![
        "record",
        "--no-progress",
        "--clock",
        "pmu-emulated",
        "-o",
        &trace_s,
    ];
    args.extend_from_slice(extra);
    if name == "echo" {
        args.extend(["--serial-in", &input]);
    }
    args.push(&elf);
    let rec = ttvm(&args, &work.join(format!("{name}.pmu.rec.out")))?;
    if !rec.stderr.contains("ttvm: trace:") {
        return Ok((None, vec![format!("record failed: {}", rec.stderr.trim())]));
    }
    let (position, digest) = recorded_final(&trace)?;
    let replays = check_replays(
        work,
        &format!("{name}.pmu"),
        &trace,
        &rec,
        (position, &digest),
        1,
    );
    Ok((Some(position), replays?.1))
}

/// `replay --goto` to the last register snapshot of the trace (through a checkpoint
/// restore on this KVM) must show exactly the recorded registers.
fn check_seek(work: &Path, name: &str, trace: &Path) -> anyhow::Result<()> {
    let mut reader = TraceReader::open(trace)?;
    let mut snapshot = None;
    for rec in reader.events() {
        let rec = rec?;
        if let Event::Registers { regs } = rec.event {
            snapshot = Some((rec.position, regs));
        }
    }
    let (position, regs) = snapshot.context("the trace has no register snapshot")?;
    let pos = position.to_string();
    let trace_s = trace.to_string_lossy();
    let out = work.join(format!("{name}.goto.out"));
    let o = ttvm(&["replay", &trace_s, "--goto", &pos, "--json"], &out)?;
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim())
        .with_context(|| format!("replay --goto {pos}: {} {}", o.stdout, o.stderr))?;
    if v["position"] != position {
        anyhow::bail!("--goto {pos} arrived at {}", v["position"]);
    }
    for (name, value) in ttvm_vmm::machine::digest::REG_NAMES.iter().zip(regs.iter()) {
        let want = format!("{value:#x}");
        if v["registers"][name] != want.as_str() {
            anyhow::bail!(
                "--goto {pos}: {name} = {}, the recording has {want}",
                v["registers"][name]
            );
        }
    }
    Ok(())
}

/// A trace from elsewhere must replay exactly or be refused up front, never diverge.
fn check_foreign(work: &Path, trace: &Path) -> anyhow::Result<String> {
    let trace_s = trace.to_string_lossy().into_owned();
    let rep = ttvm(&["replay", "--json", &trace_s], &work.join("foreign.out"))?;
    let refused = rep.status == Some(ttvm_vmm::exit_code::VMM_ERROR)
        && rep.stderr.contains("cannot replay this trace:");
    if refused {
        return Ok(format!("refused up front: {}", rep.stderr.trim()));
    }
    if rep.stdout.contains("\"result\":\"reproduced\"") {
        return Ok("replayed exactly".to_string());
    }
    anyhow::bail!(
        "neither replayed nor refused: status {:?}: {} {}",
        rep.status,
        rep.stdout.trim(),
        rep.stderr.trim()
    )
}

pub fn run(args: &ConformanceArgs) -> anyhow::Result<i32> {
    VERBOSE.store(args.verbose, std::sync::atomic::Ordering::Relaxed);
    let tmp;
    let work = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            tmp = std::env::temp_dir().join(format!("ttvm-conformance-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp
        }
    };
    let mut guests = Vec::new();
    for name in ttvm_guests::NAMES {
        if !args.json {
            eprintln!("ttvm conformance: {name}");
        }
        guests.push(check_guest(&work, name)?);
    }
    let foreign = args
        .foreign_trace
        .as_ref()
        .map(|t| check_foreign(&work, t).map_err(|e| format!("FAIL: {e:#}")));
    let foreign_ok = !matches!(foreign, Some(Err(_)));
    let passed = foreign_ok && guests.iter().all(|g| g.problems.is_empty());
    let report = Report {
        kvm_module: ttvm_vmm::host::kvm::kvm_module(),
        cpu: ttvm_logs::HostInfo::detect().cpu_model_name,
        guests,
        foreign_trace: foreign.map(|r| r.unwrap_or_else(|e| e)),
        passed,
    };
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if passed { 0 } else { 1 })
}

fn print_report(r: &Report) {
    println!("conformance on {} ({})", r.kvm_module, r.cpu);
    println!(
        "{:<8} {:>6} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9}  result",
        "guest", "run", "record", "record s", "replay s", "steps", "trace B", "pmu ticks"
    );
    for g in &r.guests {
        let status = |s: Option<i32>| s.map_or("-".to_string(), |c| c.to_string());
        println!(
            "{:<8} {:>6} {:>6} {:>9.2} {:>9.2} {:>7} {:>9} {:>9}  {}",
            g.guest,
            status(g.run_status),
            status(g.record_status),
            g.record_seconds,
            g.replay_seconds,
            g.steps,
            g.trace_bytes,
            g.pmu_ticks.map_or("-".to_string(), |t| t.to_string()),
            if g.problems.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        for p in &g.problems {
            println!("         - {p}");
        }
    }
    if let Some(f) = &r.foreign_trace {
        println!("foreign trace: {f}");
    }
    println!(
        "{}",
        if r.passed {
            "conformance: PASS"
        } else {
            "conformance: FAIL"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_process_is_described_by_the_kernel() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        std::thread::sleep(Duration::from_millis(100));
        let text = where_stuck(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(text.contains("State: S"), "{text}");
        assert!(text.contains("wchan"), "{text}");
    }
}
