//! `ttvm replay`: re-run a trace exactly, or check that it replays (`--verify`).

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ttvm_logs::{default_trace_root, resolve_trace};
use ttvm_replayer::{replay_with_progress, ReplayError, ReplayResult};
use ttvm_vmm::machine::devices::serial::SerialOutput;

use super::interrupt::stop_flag;

/// `ttvm replay [TRACE]`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The trace directory or its name under the trace root [default: the latest trace].
    #[arg(value_name = "TRACE")]
    pub trace: Option<PathBuf>,
    /// Do not show the guest's serial output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Only check that the trace replays exactly: prints a one-line verdict.
    #[arg(long)]
    pub verify: bool,
    /// Print the outcome as JSON on stdout (implies --quiet unless --serial-out is given).
    #[arg(long)]
    pub json: bool,
    /// Write the guest's serial output to FILE (with --goto/--goto-output: the output
    /// written before the position reached).
    #[arg(long, value_name = "FILE")]
    pub serial_out: Option<PathBuf>,
    /// Go to position POS (through the nearest checkpoint), print the position, the next
    /// event and the registers there, and stop. `end` goes to the end of the recording.
    #[arg(long, value_name = "POS|end", value_parser = parse_goto)]
    pub goto: Option<u64>,
    /// Go to where the guest printed a line: the instruction that wrote the first byte of
    /// the first (or --nth) line of its serial output that REGEX matches (anywhere in the
    /// line, line end excluded; Rust regex syntax), and print as --goto does. The first
    /// use replays the whole trace once to index the output (cached in TRACE/output.idx).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex, conflicts_with_all = ["goto", "gdb", "verify"])]
    pub goto_output: Option<String>,
    /// With --goto-output: the Nth matching line (from 1) [default: 1].
    #[arg(long, value_name = "N", requires = "goto_output", value_parser = clap::value_parser!(u64).range(1..))]
    pub nth: Option<u64>,
    /// Serve the replay to gdb on [ADDR:]PORT (address default 127.0.0.1) instead of
    /// running it: `target remote` from gdb, forwards and backwards.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = super::debug::parse_listen)]
    pub gdb: Option<std::net::SocketAddr>,
    /// Never print progress lines (by default they appear on a terminal's stderr).
    #[arg(long)]
    pub no_progress: bool,
    /// Memory budget for the replayer's own checkpoints (e.g. 256M).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub checkpoint_mem: String,
}

/// `--goto-output`: a valid regular expression.
fn parse_regex(s: &str) -> Result<String, String> {
    ttvm_replayer::output::compile(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `--goto`: a position, or `end` (the largest position: seeks stop at the end).
fn parse_goto(s: &str) -> Result<u64, String> {
    match s {
        "end" => Ok(u64::MAX),
        other => other
            .parse()
            .map_err(|_| format!("{other:?}: give a position (a number of steps) or `end`")),
    }
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<i32> {
    let trace = resolve_trace(&default_trace_root()?, args.trace.as_deref())?;
    if let Some(listen) = args.gdb {
        return super::debug::serve_replay(
            &trace,
            listen,
            args.serial_out.as_deref(),
            &args.checkpoint_mem,
        );
    }
    if let Some(goto) = &args.goto {
        return super::goto::run(args, &trace, super::goto::Goto::Position(*goto));
    }
    if let Some(pattern) = &args.goto_output {
        let nth = usize::try_from(args.nth.unwrap_or(1)).unwrap_or(usize::MAX);
        return super::goto::run(args, &trace, super::goto::Goto::Output { pattern, nth });
    }
    let serial_out: SerialOutput = match &args.serial_out {
        Some(path) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create --serial-out {}", path.display()))?,
        ),
        None if args.quiet || args.verify || args.json => Box::new(io::sink()),
        None => Box::new(io::stdout()),
    };
    let progress = !args.no_progress && io::stderr().is_terminal();
    let outcome = replay_with_progress(&trace, serial_out, stop_flag(), None, progress);
    let _ = io::stdout().flush();
    let replay = match outcome {
        Ok(replay) => replay,
        Err(ReplayError::Divergence(d)) if args.json => {
            let value =
                serde_json::json!({ "result": "divergence", "trace": trace, "divergence": d });
            println!("{value}");
            return Ok(ttvm_vmm::exit_code::DIVERGENCE);
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("ttvm: {}: {e}", trace.display());
            return Ok(code);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&replay)?);
        return Ok(replay.exit_code());
    }
    let what = match &replay.result {
        ReplayResult::Reproduced { end, .. } => format!("{end} at position {}", replay.position),
        ReplayResult::EndsEarly { after_event } => format!(
            "trace ends early after event {after_event}: recorder did not finish (replayed to position {})",
            replay.position
        ),
        ReplayResult::RecordingInterrupted => format!(
            "the recording was stopped by its user at position {}; replayed to there",
            replay.position
        ),
        ReplayResult::Stopped => format!("replay stopped at position {}", replay.position),
    };
    if args.verify {
        let verdict = match replay.result {
            ReplayResult::Reproduced { .. } | ReplayResult::RecordingInterrupted => {
                "replay verified"
            }
            _ => "replay incomplete",
        };
        println!(
            "{verdict}: {what}; {} events in {:.2} s",
            replay.events, replay.seconds
        );
    } else {
        eprintln!("ttvm: replay: {what}");
    }
    Ok(replay.exit_code())
}
