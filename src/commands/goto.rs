//! `ttvm replay TRACE --goto POS`: jump to a position through the checkpoints and show the
//! machine there. `--goto-output REGEX [--nth N]`: the same, at the instruction that wrote
//! the first byte of the Nth output line REGEX matches (found in the output index).

use std::io::{self, IsTerminal};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use ttvm_logs::output_index::OUTPUT_INDEX_FILE;
use ttvm_replayer::output::{load_or_build, OutputError, OutputIndex, OutputLine};
use ttvm_replayer::timeline::{Arrival, Timeline, TimelineOptions};
use ttvm_vmm::machine::digest::REG_NAMES;
use ttvm_vmm::machine::memory::parse_size;

use super::interrupt::stop_flag;
use super::replay::ReplayArgs;

#[derive(Serialize)]
struct GotoReport {
    trace: String,
    asked: String,
    position: u64,
    /// `target`, or where the trace ended first (`end`, `trace_stops`), or `interrupted`.
    arrival: String,
    end: Option<String>,
    next_event: Option<u64>,
    registers: serde_json::Map<String, serde_json::Value>,
    /// For --goto-output: the line whose first byte the instruction here writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_line: Option<LineReport>,
    seconds: f64,
    restores: u64,
    steps_replayed: u64,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct LineReport {
    /// Line number in the whole output (from 1).
    line: usize,
    /// Which match of the pattern it is (from 1).
    #[serde(rename = "match")]
    nth: usize,
    /// Offset of its first byte in the whole output.
    offset: usize,
    text: String,
}

/// Where `--goto`/`--goto-output` goes.
pub enum Goto<'a> {
    Position(u64),
    Output { pattern: &'a str, nth: usize },
}

/// The output index of `trace`, saying on stderr when it must be built.
fn output_index(args: &ReplayArgs, trace: &Path) -> Result<OutputIndex, OutputError> {
    let progress = !args.no_progress && io::stderr().is_terminal();
    load_or_build(trace, progress, stop_flag(), || {
        eprintln!(
            "ttvm: indexing the guest's serial output (one replay of the whole trace; cached \
             in {})",
            trace.join(OUTPUT_INDEX_FILE).display()
        );
    })
}

pub fn run(args: &ReplayArgs, trace: &Path, goto: Goto<'_>) -> anyhow::Result<i32> {
    let checkpoint_mem = parse_size(&args.checkpoint_mem)
        .with_context(|| format!("--checkpoint-mem {:?}", args.checkpoint_mem))?;
    let serial_file = match &args.serial_out {
        Some(path) => Some(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --serial-out {}", path.display()))?,
        ),
        None => None,
    };
    let started = Instant::now();
    // The index is needed to find the line, or to write the output up to the position.
    let index = match (&goto, &serial_file) {
        (Goto::Output { .. }, _) | (_, Some(_)) => match output_index(args, trace) {
            Ok(index) => Some(index),
            Err(OutputError::Interrupted) => {
                eprintln!("ttvm: {}", OutputError::Interrupted);
                return Ok(ttvm_vmm::exit_code::INTERRUPTED);
            }
            Err(e) => return Err(e.into()),
        },
        _ => None,
    };
    let (target, line) = match goto {
        Goto::Position(p) => (p, None),
        Goto::Output { pattern, nth } => {
            let index = index.as_ref().context("no output index")?;
            let line: OutputLine = index.find(pattern, nth)?;
            (line.position, Some((line, nth)))
        }
    };
    let opts = TimelineOptions {
        checkpoint_mem: checkpoint_mem as usize,
        ..TimelineOptions::default()
    };
    let mut timeline = match Timeline::open(trace, Box::new(io::sink()), stop_flag(), opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ttvm: {}: {e}", trace.display());
            return Ok(e.exit_code());
        }
    };
    let arrival = match timeline.seek(target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ttvm: {}: {e}", trace.display());
            return Ok(e.exit_code());
        }
    };
    let (arrival_name, end) = match &arrival {
        Arrival::Target | Arrival::Watch => ("target", None),
        Arrival::End(end) => ("end", Some(end.to_string())),
        Arrival::TraceStops => ("trace_stops", None),
        Arrival::Interrupted => ("interrupted", None),
    };
    if let (Some(mut file), Some(index)) = (serial_file, &index) {
        // The output written by the instructions before the one here.
        let before = index.transcript().before(timeline.position());
        io::Write::write_all(&mut file, before).context("writing --serial-out")?;
    }
    let regs = timeline.machine().stepped_regs();
    let mut registers = serde_json::Map::new();
    if let Some(regs) = regs {
        for (name, value) in REG_NAMES.iter().zip(regs.0.iter()) {
            registers.insert(name.to_string(), serde_json::json!(format!("{value:#x}")));
        }
    }
    let report = GotoReport {
        trace: trace.display().to_string(),
        asked: if target == u64::MAX {
            "end".to_string()
        } else {
            target.to_string()
        },
        position: timeline.position(),
        arrival: arrival_name.to_string(),
        end,
        next_event: timeline.driver().next_event().map(|(i, _)| i),
        registers,
        output_line: line.map(|(l, nth)| LineReport {
            line: l.line,
            nth,
            offset: l.offset,
            text: l.text,
        }),
        seconds: started.elapsed().as_secs_f64(),
        restores: timeline.stats.restores,
        steps_replayed: timeline.stats.steps_replayed,
        warnings: timeline.warnings.clone(),
    };
    // The warnings were logged on stderr as they happened; JSON carries them too.
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let note = match &arrival {
            Arrival::Target => String::new(),
            Arrival::End(end) => format!(" (the recording ends here: {end})"),
            Arrival::TraceStops => " (the trace stops here)".to_string(),
            _ => " (interrupted)".to_string(),
        };
        println!("position {}{note}", report.position);
        if let Some(l) = &report.output_line {
            println!(
                "the instruction that writes the first byte of output line {} (match {}): {}",
                l.line, l.nth, l.text
            );
        }
        if let Some((i, rec)) = timeline.driver().next_event() {
            println!(
                "next event #{i} at position {}: {}",
                rec.position, rec.event
            );
        }
        if let Some(regs) = regs {
            for (k, (name, value)) in REG_NAMES.iter().zip(regs.0.iter()).enumerate() {
                let sep = if k % 4 == 3 || k + 1 == REG_NAMES.len() {
                    "\n"
                } else {
                    "  "
                };
                print!("{name:>6} {value:#018x}{sep}");
            }
        }
        eprintln!(
            "ttvm: reached in {:.3} s ({} restores, {} steps replayed)",
            report.seconds, report.restores, report.steps_replayed
        );
    }
    Ok(match arrival {
        Arrival::Interrupted => ttvm_vmm::exit_code::INTERRUPTED,
        _ => 0,
    })
}
