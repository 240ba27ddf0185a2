//! `ttvm record --chaos` and `ttvm record --until-fail N`: record runs until one fails, keep
//! that one, delete the others, and say how to replay it.
//!
//! A run fails when the guest ends any other way than exiting with status 0 (a non-zero
//! status, triple fault, reset, halted for good, an instruction KVM cannot run) or when a
//! line of its serial output matches `--fail-on REGEX`. With `--chaos`, run k (from 1)
//! uses seed S+k-1, so any run can be recorded again with `--chaos --seed S+k-1`.
//!
//! Exit codes: 117 a failing run was found and kept; 118 no run failed (every trace was
//! deleted); 130 stopped by the user (the unfinished run is deleted); 120 ttvm itself
//! failed; 2 bad command line.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use regex::Regex;
use serde::Serialize;
use ttvm_logs::location::update_latest;
use ttvm_logs::{TraceLocation, LATEST_LINK};
use ttvm_recorder::{record, Recording};
use ttvm_vmm::{RunEnd, SerialSource};

use super::interrupt::stop_flag;
use super::record::{record_options, RecordArgs};
use ttvm_recorder::RecordClock;

/// `--until-fail`: a failing run was found; its trace is kept.
pub const EXIT_FAILURE_KEPT: i32 = 117;
/// `--until-fail`: no run failed; no trace was kept.
pub const EXIT_NO_FAILURE: i32 = 118;
/// Serial output kept per run for the report (the regex sees every line regardless).
const OUTPUT_CAP: usize = 16 << 20;
/// Serial output shown in the JSON summary: the last this many bytes.
const TAIL_BYTES: usize = 4096;

/// Chaos and keep-the-failing-run options of `ttvm record`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Perturb what the recorder is free to choose, from a seeded generator: instruction
    /// rate (timer ticks land elsewhere), TSC and RTC phase, interrupt delivery delays (up
    /// to 512 instructions, never while halted), serial input arrival. The seed is stored
    /// in the trace; replay needs nothing else.
    #[arg(long)]
    pub chaos: bool,
    /// The chaos seed [default: random]. With --until-fail, run k uses seed S+k-1.
    #[arg(long, value_name = "S", requires = "chaos", value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Record up to N runs, keep the first that fails (non-zero guest exit, triple fault,
    /// reset, halt for good, or --fail-on), delete the others. Exit codes: 117 a failing
    /// run was kept, 118 no run failed, 130 stopped, 120 ttvm error.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub until_fail: Option<u32>,
    /// With --until-fail: a run also fails when a line of its serial output matches REGEX.
    #[arg(long, value_name = "REGEX", requires = "until_fail", value_parser = parse_regex)]
    pub fail_on: Option<Regex>,
    /// With --until-fail: print a JSON summary on stdout (runs, seeds, the failure, the trace).
    #[arg(long, requires = "until_fail")]
    pub json: bool,
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("not a 64-bit seed (decimal or 0x-hex): {e}"))
}

fn parse_regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| e.to_string())
}

impl ChaosArgs {
    /// The seed of the first (or only) run: `--seed`, else a random one; None without chaos.
    pub fn first_seed(&self) -> Option<u64> {
        self.chaos.then(|| {
            self.seed
                .unwrap_or_else(|| ttvm_vmm::run::live::host_random() >> 32)
        })
    }
}

/// The guest's serial output of one run, checked line by line against `--fail-on`.
#[derive(Default)]
struct Tap {
    regex: Option<Regex>,
    line: Vec<u8>,
    output: Vec<u8>,
    dropped: u64,
    matched: Option<String>,
}

impl Tap {
    fn check_line(&mut self) {
        if self.matched.is_none() {
            if let Some(re) = &self.regex {
                let text = String::from_utf8_lossy(&self.line);
                let text = text.trim_end_matches(['\n', '\r']);
                if re.is_match(text) {
                    self.matched = Some(text.to_string());
                }
            }
        }
        self.line.clear();
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.output.len());
        self.output
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.dropped += bytes.len().saturating_sub(room) as u64;
        for &b in bytes {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= 1 << 16 {
                self.check_line();
            }
        }
    }
}

struct TapWriter(Arc<Mutex<Tap>>);

impl Write for TapWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut tap) = self.0.lock() {
            tap.take(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serial input for every run: the same file, or stdin read once.
enum Input {
    None,
    File(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

impl Input {
    fn from_args(serial_in: Option<&Path>) -> anyhow::Result<Input> {
        match serial_in {
            Some(path) if path != Path::new("-") => {
                File::open(path)
                    .with_context(|| format!("cannot open --serial-in {}", path.display()))?;
                Ok(Input::File(path.to_path_buf()))
            }
            // A terminal cannot be replayed into every run: no input then.
            _ if io::stdin().is_terminal() => Ok(Input::None),
            _ => {
                let mut bytes = Vec::new();
                io::stdin()
                    .read_to_end(&mut bytes)
                    .context("cannot read the serial input from stdin")?;
                Ok(Input::Bytes(Arc::new(bytes)))
            }
        }
    }

    fn source(&self) -> anyhow::Result<SerialSource> {
        Ok(match self {
            Input::None => SerialSource::None,
            Input::File(path) => SerialSource::Reader(Box::new(
                File::open(path)
                    .with_context(|| format!("cannot open --serial-in {}", path.display()))?,
            )),
            Input::Bytes(bytes) => {
                SerialSource::Reader(Box::new(io::Cursor::new(bytes.as_ref().clone())))
            }
        })
    }
}

#[derive(Debug, Serialize)]
struct RunRecord {
    run: u32,
    seed: Option<u64>,
    ns_per_step: Option<u64>,
    end: String,
    exit_code: i32,
    steps: u64,
    seconds: f64,
    failed: bool,
}

#[derive(Debug, Serialize)]
struct Failure {
    run: u32,
    seed: Option<u64>,
    reason: String,
    end: String,
    exit_code: i32,
    position: u64,
    matched_line: Option<String>,
    output_tail: String,
}

#[derive(Debug, Serialize)]
struct Commands {
    replay: String,
    debug: String,
    verify: String,
    dump: String,
    export: String,
    record_again: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    result: &'static str,
    exit_code: i32,
    runs: u32,
    max_runs: u32,
    chaos: bool,
    seeds: Vec<u64>,
    fail_on: Option<String>,
    run_results: Vec<RunRecord>,
    failure: Option<Failure>,
    trace: Option<PathBuf>,
    commands: Option<Commands>,
}

/// Why a run failed, if it did.
fn failure_reason(end: &RunEnd, matched: Option<&str>) -> Option<String> {
    let ended_badly = !matches!(end, RunEnd::GuestExit { status: 0 });
    match (ended_badly, matched) {
        (false, None) => None,
        (true, None) => Some(end.to_string()),
        (false, Some(line)) => Some(format!("serial output matched --fail-on: {line:?}")),
        (true, Some(line)) => Some(format!("{end}; serial output matched --fail-on: {line:?}")),
    }
}

/// Quotes `text` for a POSIX shell when needed.
fn sh(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=:,+-@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn commands(args: &RecordArgs, trace: &Path, seed: Option<u64>) -> Commands {
    let t = sh(&trace.display().to_string());
    let name = trace
        .file_name()
        .map_or_else(|| "trace".into(), |n| n.to_string_lossy().into_owned());
    let record_again = seed.map(|seed| {
        let mut cmd = format!("ttvm record --chaos --seed {seed}");
        let m = &args.machine;
        if m.mem != ttvm_vmm::machine::memory::DEFAULT_MEM {
            cmd += &format!(" --mem {}", m.mem);
        }
        if !m.cmdline.is_empty() {
            cmd += &format!(" --cmdline {}", sh(&m.cmdline));
        }
        if args.time_rate != ttvm_vmm::run::singlestep::TimeConfig::default().ns_per_step {
            cmd += &format!(" --time-rate {}", args.time_rate);
        }
        if let Some(input) = &m.serial_in {
            cmd += &format!(" --serial-in {}", sh(&input.display().to_string()));
        }
        cmd + " " + &sh(&args.guest.display().to_string())
    });
    Commands {
        replay: format!("ttvm replay {t}"),
        debug: format!("ttvm debug {t}"),
        verify: format!("ttvm replay --verify {t}"),
        dump: format!("ttvm dump {t}"),
        export: format!("ttvm export {t} -o {}", sh(&format!("{name}.ttvm"))),
        record_again,
    }
}

/// Puts `latest-trace` back as it was before the runs (none of them was kept).
fn restore_latest(root: &Path, previous: Option<PathBuf>) {
    let link = root.join(LATEST_LINK);
    let restored = match previous {
        Some(target) => update_latest(root, &root.join(target)).map_err(|e| e.to_string()),
        None => fs::remove_file(&link).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(e.to_string()),
        }),
    };
    if let Err(e) = restored {
        tracing::warn!("cannot restore {}: {e}", link.display());
    }
}

/// Records up to `max_runs` runs of `image`; returns the exit code.
pub fn run(
    args: &RecordArgs,
    clock: &RecordClock,
    image: &[u8],
    name: &str,
    image_name: &str,
    max_runs: u32,
) -> anyhow::Result<i32> {
    let opts = &args.chaos;
    let location = match &args.output {
        Some(dir) => TraceLocation::Exact(dir.clone()),
        None => TraceLocation::default_root()?,
    };
    let previous_latest = match &location {
        TraceLocation::InRoot { root } => Some(fs::read_link(root.join(LATEST_LINK)).ok()),
        TraceLocation::Exact(_) => None,
    };
    let input = Input::from_args(args.machine.serial_in.as_deref())?;
    let first_seed = opts.first_seed();
    let stop = stop_flag();
    let mut results = Vec::new();
    let mut seeds = Vec::new();
    let mut kept: Option<(Recording, Failure)> = None;
    let mut stopped = false;
    for run in 1..=max_runs {
        let seed = first_seed.map(|s| s.wrapping_add(u64::from(run - 1)));
        seeds.extend(seed);
        let tap = Arc::new(Mutex::new(Tap {
            regex: opts.fail_on.clone(),
            ..Tap::default()
        }));
        let rec_opts = record_options(args, clock, name, image_name, location.clone(), seed);
        let recording = record(
            rec_opts,
            image,
            Box::new(TapWriter(tap.clone())),
            input.source()?,
            stop.clone(),
        )?;
        let mut tap = std::mem::take(&mut *tap.lock().map_err(|_| anyhow::anyhow!("tap"))?);
        tap.check_line();
        let what = match &seed {
            Some(seed) => format!(
                " (chaos seed {seed}, {} ns per instruction)",
                recording.chaos.map_or(0, |p| p.ns_per_step)
            ),
            None => String::new(),
        };
        let Some(end) = recording.end.clone() else {
            eprintln!("ttvm: run {run}/{max_runs}{what}: stopped by the user; trace deleted");
            fs::remove_dir_all(&recording.trace_dir).ok();
            stopped = true;
            break;
        };
        let reason = failure_reason(&end, tap.matched.as_deref());
        eprintln!(
            "ttvm: run {run}/{max_runs}{what}: {end}; {} steps, {:.2} s: {}",
            recording.steps,
            recording.duration.as_secs_f64(),
            if reason.is_some() { "FAILED" } else { "pass" }
        );
        results.push(RunRecord {
            run,
            seed,
            ns_per_step: recording.chaos.map(|p| p.ns_per_step),
            end: end.to_string(),
            exit_code: end.exit_code(),
            steps: recording.steps,
            seconds: recording.duration.as_secs_f64(),
            failed: reason.is_some(),
        });
        let Some(reason) = reason else {
            fs::remove_dir_all(&recording.trace_dir).with_context(|| {
                format!(
                    "cannot delete the passing trace {}",
                    recording.trace_dir.display()
                )
            })?;
            continue;
        };
        let tail_from = tap.output.len().saturating_sub(TAIL_BYTES);
        let failure = Failure {
            run,
            seed,
            reason,
            end: end.to_string(),
            exit_code: end.exit_code(),
            position: recording.steps,
            matched_line: tap.matched.clone(),
            output_tail: String::from_utf8_lossy(&tap.output[tail_from..]).into_owned(),
        };
        if let Some(path) = &args.machine.serial_out {
            fs::write(path, &tap.output)
                .with_context(|| format!("cannot write --serial-out {}", path.display()))?;
        } else if !opts.json {
            eprintln!("ttvm: serial output of the failing run:");
            let mut out = io::stdout().lock();
            let _ = out.write_all(&tap.output).and_then(|()| out.flush());
        }
        if tap.dropped > 0 {
            eprintln!("ttvm: (only the first {OUTPUT_CAP} bytes of its output were kept)");
        }
        kept = Some((recording, failure));
        break;
    }
    if kept.is_none() {
        if let (TraceLocation::InRoot { root }, Some(previous)) = (&location, previous_latest) {
            restore_latest(root, previous);
        }
    }
    let runs = results.len() as u32 + u32::from(stopped);
    let code = match (&kept, stopped) {
        (Some(_), _) => EXIT_FAILURE_KEPT,
        (None, true) => ttvm_vmm::exit_code::INTERRUPTED,
        (None, false) => EXIT_NO_FAILURE,
    };
    let seed_range = match (seeds.first(), seeds.last()) {
        (Some(a), Some(b)) if a != b => format!(" (chaos seeds {a}..={b})"),
        (Some(a), _) => format!(" (chaos seed {a})"),
        _ => String::new(),
    };
    let commands = kept
        .as_ref()
        .map(|(rec, f)| commands(args, &rec.trace_dir, f.seed));
    match (&kept, &commands) {
        (Some((rec, f)), Some(c)) => {
            eprintln!(
                "ttvm: run {} of {runs}{seed_range} failed: {}",
                f.run, f.reason
            );
            eprintln!(
                "ttvm: kept its trace: {} ({} passing run(s) deleted)",
                rec.trace_dir.display(),
                runs - 1
            );
            eprintln!("ttvm: replay the failure:    {}", c.replay);
            eprintln!("ttvm: debug it in gdb:       {}", c.debug);
            eprintln!("ttvm: check it replays:      {}", c.verify);
            eprintln!("ttvm: list its events:       {}", c.dump);
            eprintln!("ttvm: archive it (for CI):   {}", c.export);
            if let Some(again) = &c.record_again {
                eprintln!("ttvm: record this run again: {again}");
            }
        }
        _ if stopped => eprintln!("ttvm: stopped by the user after {runs} run(s); no trace kept"),
        _ => eprintln!("ttvm: no failure in {runs} run(s){seed_range}; every trace was deleted"),
    }
    if opts.json {
        let summary = Summary {
            result: match code {
                EXIT_FAILURE_KEPT => "failure",
                EXIT_NO_FAILURE => "no_failure",
                _ => "stopped",
            },
            exit_code: code,
            runs,
            max_runs,
            chaos: first_seed.is_some(),
            seeds,
            fail_on: opts.fail_on.as_ref().map(|r| r.as_str().to_string()),
            run_results: results,
            trace: kept.as_ref().map(|(rec, _)| rec.trace_dir.clone()),
            failure: kept.map(|(_, f)| f),
            commands,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_sees_whole_lines_in_pieces() {
        let mut tap = Tap {
            regex: Some(Regex::new("^PANIC: .*corrupted").unwrap()),
            ..Tap::default()
        };
        tap.take(b"race: 20 ticks\nPAN");
        assert!(tap.matched.is_none());
        tap.take(b"IC: race: items[2] corrupted (0xdeaddead)\r\nmore");
        assert_eq!(
            tap.matched.as_deref(),
            Some("PANIC: race: items[2] corrupted (0xdeaddead)")
        );
        assert_eq!(tap.output.len(), 65);
    }

    #[test]
    fn reasons() {
        let ok = RunEnd::GuestExit { status: 0 };
        assert_eq!(failure_reason(&ok, None), None);
        let bad = RunEnd::GuestExit { status: 3 };
        assert_eq!(
            failure_reason(&bad, None).as_deref(),
            Some("guest exited with status 3")
        );
        assert!(failure_reason(&ok, Some("x")).unwrap().contains("matched"));
        assert!(failure_reason(&RunEnd::Reset { rip: 0 }, None).is_some());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh("/tmp/race-3"), "/tmp/race-3");
        assert_eq!(sh("race.hz=5000 x"), "'race.hz=5000 x'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(parse_seed("0x10"), Ok(16));
        assert!(parse_seed("ten").is_err());
    }
}
