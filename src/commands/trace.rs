//! `ttvm ls` and `ttvm dump`: argument parsing and exit codes only; the listing and
//! formatting live in `ttvm_logs::report`.
//!
//! Exit codes of `ttvm dump`: 0 everything requested was printed; 2 the trace ends
//! early (its recorder did not finish): every readable event was printed, the message
//! is on stderr; 3 the trace is damaged or cannot be read (newer format, corrupt chunk,
//! missing or special files, a close record contradicting the events). `ttvm ls` exits 0
//! (damaged traces are listed with their error). Other failures (no trace root, unknown
//! trace name, `--from` past the last event) exit 120.
use clap::Args;
use std::io::{self, Write};
use std::path::PathBuf;
use ttvm_logs::report::{self, DumpEnd, DumpOptions};
use ttvm_logs::{default_trace_root, resolve_trace, ReadError, TraceReader};

/// Exit code: the trace ends early (recorder did not finish).
pub const EXIT_ENDS_EARLY: i32 = 2;
/// Exit code: the trace is damaged or unreadable.
pub const EXIT_DAMAGED: i32 = 3;

/// `ttvm ls [DIR] [--json]`
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Directory holding traces (default: $TTVM_TRACE_DIR or ~/.local/share/ttvm/traces).
    pub dir: Option<PathBuf>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ttvm dump [TRACE] [--from N] [--to M] [--stats] [--json]`
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Trace directory, or a trace name inside the trace root (default: latest-trace).
    pub trace: Option<PathBuf>,
    /// First event index to print (0-based).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last event index to print (inclusive).
    #[arg(long)]
    pub to: Option<u64>,
    /// Print per-kind counts, sizes and chunk figures instead of events.
    #[arg(long)]
    pub stats: bool,
    /// JSON output: one object per line for events (then a last line with the trace's
    /// final position, event and checkpoint counts), one document for --stats.
    #[arg(long)]
    pub json: bool,
    /// List the trace's checkpoints (id, position, size) instead of events.
    #[arg(long, conflicts_with = "stats")]
    pub checkpoints: bool,
}

/// The last line of `ttvm dump --json`.
#[derive(serde::Serialize)]
struct DumpSummary {
    summary: bool,
    complete: bool,
    /// Steps in the recording (from the close record; None if the trace is incomplete).
    final_position: Option<u64>,
    events: u64,
    checkpoints: usize,
}

fn print_checkpoints(reader: &TraceReader, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let list = reader.checkpoints()?;
    if json {
        for c in &list {
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({"id": c.id.0, "position": c.position, "bytes": c.disk_size}),
            )?;
            writeln!(out)?;
        }
    } else if list.is_empty() {
        writeln!(out, "no checkpoints (replay starts from the boot state)")?;
    } else {
        writeln!(out, "{:>6} {:>12} {:>10}", "id", "position", "size")?;
        for c in &list {
            writeln!(
                out,
                "{:>6} {:>12} {:>10}",
                c.id.0,
                c.position,
                report::format_size(c.disk_size)
            )?;
        }
        let total: u64 = list.iter().map(|c| c.disk_size).sum();
        writeln!(
            out,
            "{} checkpoints, {}",
            list.len(),
            report::format_size(total)
        )?;
    }
    Ok(())
}

/// Output errors on a closed pipe (`ttvm dump | head`) are not failures.
fn finish_output(result: Result<(), report::ReportError>) -> anyhow::Result<()> {
    match result {
        Err(report::ReportError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub fn ls(args: &LsArgs) -> anyhow::Result<i32> {
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_trace_root()?,
    };
    if !root.exists() && args.dir.is_none() {
        eprintln!("no traces yet ({} does not exist)", root.display());
        if args.json {
            println!("[]");
        }
        return Ok(0);
    }
    let rows = report::list_traces(&root)?;
    let mut out = io::stdout().lock();
    finish_output((|| {
        if args.json {
            report::write_json(&rows, &mut out)?;
        } else if rows.is_empty() {
            eprintln!("no traces in {}", root.display());
        } else {
            report::write_listing_table(&rows, &mut out)?;
        }
        Ok(out.flush()?)
    })())?;
    Ok(0)
}

fn exit_code(err: &ReadError) -> i32 {
    if err.ends_early().is_some() {
        EXIT_ENDS_EARLY
    } else {
        EXIT_DAMAGED
    }
}

/// `--from N` past the last event: a damaged stream is what ends it early (exit 3);
/// otherwise the request itself is wrong (exit 120). Returns the exit code if so.
fn check_from(reader: &mut TraceReader, from: Option<u64>) -> Option<i32> {
    let available = reader.event_count();
    let from = from.filter(|&from| from > available)?;
    let damage = match reader.seek_event(available) {
        Err(e) => Some(e),
        Ok(()) => match reader.next_event() {
            Some(Err(e)) if e.ends_early().is_none() => Some(e),
            _ => None,
        },
    };
    if let Some(e) = damage {
        eprintln!("ttvm dump: {e}");
        return Some(EXIT_DAMAGED);
    }
    eprintln!(
        "ttvm dump: --from {from} is past the end: {} has {available} events",
        reader.dir().display()
    );
    Some(ttvm_vmm::exit_code::VMM_ERROR)
}

pub fn dump(args: &DumpArgs) -> anyhow::Result<i32> {
    let root = default_trace_root();
    let dir = match (&args.trace, root) {
        (Some(path), _) if path.exists() => path.clone(),
        (given, root) => resolve_trace(&root?, given.as_deref())?,
    };
    let mut reader = match TraceReader::open(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ttvm dump: {}: {e}", dir.display());
            return Ok(EXIT_DAMAGED);
        }
    };
    if let Some(code) = check_from(&mut reader, args.from) {
        return Ok(code);
    }
    let opts = DumpOptions {
        from: args.from,
        to: args.to,
        json: args.json,
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.checkpoints {
        match print_checkpoints(&reader, args.json, &mut out).and_then(|_| Ok(out.flush()?)) {
            Err(e)
                if e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => {}
            other => other?,
        }
        return Ok(0);
    }
    let mut error = None;
    finish_output((|| {
        if args.stats {
            let (stats, err) = report::compute_stats(&mut reader, &opts);
            error = err;
            if args.json {
                report::write_json(&stats, &mut out)?;
            } else {
                report::write_stats(&stats, &mut out)?;
            }
        } else if let DumpEnd::Error(e) = report::dump_events(&mut reader, &opts, &mut out)? {
            error = Some(e);
        } else if args.json && args.from.is_none() && args.to.is_none() {
            let summary = DumpSummary {
                summary: true,
                complete: reader.is_complete(),
                final_position: reader
                    .header()
                    .close
                    .as_ref()
                    .filter(|_| reader.is_complete())
                    .map(|c| c.final_position),
                events: reader.event_count(),
                checkpoints: reader.checkpoints().map(|c| c.len()).unwrap_or(0),
            };
            serde_json::to_writer(&mut out, &summary).map_err(io::Error::other)?;
            writeln!(out)?;
        }
        Ok(out.flush()?)
    })())?;
    Ok(match error {
        None => 0,
        Some(e) => {
            eprintln!("ttvm dump: {e}");
            exit_code(&e)
        }
    })
}
