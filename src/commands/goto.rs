//! `ttvm replay TRACE --goto POS`: jump to a position through the checkpoints and show the
//! machine there.

use std::io;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
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
    seconds: f64,
    restores: u64,
    steps_replayed: u64,
    warnings: Vec<String>,
}

pub fn run(args: &ReplayArgs, trace: &Path, target: u64) -> anyhow::Result<i32> {
    let checkpoint_mem = parse_size(&args.checkpoint_mem)
        .with_context(|| format!("--checkpoint-mem {:?}", args.checkpoint_mem))?;
    let serial: ttvm_vmm::machine::devices::serial::SerialOutput = match &args.serial_out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --serial-out {}", path.display()))?,
        ),
        None => Box::new(io::sink()),
    };
    let started = Instant::now();
    let opts = TimelineOptions {
        checkpoint_mem: checkpoint_mem as usize,
        ..TimelineOptions::default()
    };
    let mut timeline = match Timeline::open(trace, serial, stop_flag(), opts) {
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
