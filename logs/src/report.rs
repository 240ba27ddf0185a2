//! What `ttvm ls` and `ttvm dump` print: trace listings, event dumps and statistics.
//! The CLI only parses arguments and maps outcomes to exit codes.
use crate::codec::encoded_len;
use crate::event::{EventKind, EventRecord};
use crate::fsutil::dir_size;
use crate::reader::{ReadError, TraceReader};
use crate::stream::Tail;
use crate::{COMPLETE_MARKER, EVENTS_FILE, INCOMPLETE_MARKER};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors producing a report.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The trace root could not be listed.
    #[error("cannot list traces in {path}: {source}")]
    List {
        /// The root.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// Serializing JSON failed.
    #[error("cannot format JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// State of a listed trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    /// Closed cleanly.
    Complete,
    /// Still recording, or the recorder died; readable up to its last flush.
    Incomplete,
    /// Cannot be opened, or holds damaged data.
    Damaged,
}

impl std::fmt::Display for TraceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceStatus::Complete => "complete",
            TraceStatus::Incomplete => "incomplete",
            TraceStatus::Damaged => "damaged",
        })
    }
}

/// One row of `ttvm ls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceListing {
    /// Directory name.
    pub name: String,
    /// Directory path.
    pub path: PathBuf,
    /// Creation time (RFC 3339), if the header is readable.
    pub created: Option<String>,
    /// Creation time (Unix seconds).
    pub created_unix: Option<u64>,
    /// Guest name.
    pub guest: Option<String>,
    /// Position clock name.
    pub clock: Option<String>,
    /// The seed of a chaos recording.
    pub chaos_seed: Option<u64>,
    /// Events readable.
    pub events: Option<u64>,
    /// Recording duration (complete traces).
    pub duration_nanos: Option<u64>,
    /// Final position (complete traces).
    pub final_position: Option<u64>,
    /// Why the run ended (complete traces).
    pub end_reason: Option<String>,
    /// Size of all files of the trace.
    pub size_bytes: u64,
    /// Complete, incomplete or damaged.
    pub status: TraceStatus,
    /// What is wrong with a damaged trace.
    pub error: Option<String>,
}

fn looks_like_trace(dir: &Path) -> bool {
    [
        "header.json",
        EVENTS_FILE,
        COMPLETE_MARKER,
        INCOMPLETE_MARKER,
    ]
    .iter()
    .any(|f| dir.join(f).exists())
}

/// Describes the trace in `dir` (never fails: problems become a damaged listing).
pub fn describe_trace(dir: &Path) -> TraceListing {
    let mut row = TraceListing {
        name: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        path: dir.to_path_buf(),
        created: None,
        created_unix: None,
        guest: None,
        clock: None,
        chaos_seed: None,
        events: None,
        duration_nanos: None,
        final_position: None,
        end_reason: None,
        size_bytes: dir_size(dir),
        status: TraceStatus::Damaged,
        error: None,
    };
    let reader = match TraceReader::open(dir) {
        Ok(r) => r,
        Err(e) => {
            row.error = Some(e.to_string());
            return row;
        }
    };
    let h = reader.header();
    row.created = Some(h.created.rfc3339.clone());
    row.created_unix = Some(h.created.unix_seconds);
    row.guest = Some(h.guest_name.clone());
    row.clock = Some(h.clock.name().to_string());
    row.chaos_seed = h.clock.chaos_seed();
    row.events = Some(reader.event_count());
    if let Some(close) = h.close.as_ref().filter(|_| reader.is_complete()) {
        row.duration_nanos = Some(close.duration_nanos);
        row.final_position = Some(close.final_position);
        row.end_reason = Some(close.end_reason.to_string());
    }
    row.status = if reader.is_complete() {
        TraceStatus::Complete
    } else {
        TraceStatus::Incomplete
    };
    if let Err(e) = reader.check_close() {
        row.status = TraceStatus::Damaged;
        row.error = Some(e.to_string());
    }
    match reader.tail() {
        Tail::Corrupt { offset, detail } => {
            row.status = TraceStatus::Damaged;
            row.error = Some(format!(
                "corrupt data in {EVENTS_FILE} at byte {offset}: {detail}"
            ));
        }
        Tail::Truncated { offset } if reader.is_complete() => {
            row.status = TraceStatus::Damaged;
            row.error = Some(format!("{EVENTS_FILE} cut short at byte {offset}"));
        }
        _ => {}
    }
    row
}

/// Lists the traces directly under `root` (skipping links such as `latest-trace` and
/// entries that are not traces), oldest first.
pub fn list_traces(root: &Path) -> Result<Vec<TraceListing>, ReportError> {
    let entries = std::fs::read_dir(root).map_err(|source| ReportError::List {
        path: root.to_path_buf(),
        source,
    })?;
    let mut rows: Vec<TraceListing> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| looks_like_trace(p))
        .map(|p| describe_trace(&p))
        .collect();
    rows.sort_by(|a, b| {
        (a.created_unix.unwrap_or(0), &a.name).cmp(&(b.created_unix.unwrap_or(0), &b.name))
    });
    Ok(rows)
}

/// `1.5s`, `2m03s`, `1h02m`.
pub fn format_duration(nanos: u64) -> String {
    let secs = nanos as f64 / 1e9;
    if secs < 60.0 {
        format!("{secs:.3}s")
    } else if secs < 3600.0 {
        format!(
            "{}m{:02}s",
            nanos / 60_000_000_000,
            nanos / 1_000_000_000 % 60
        )
    } else {
        format!(
            "{}h{:02}m",
            nanos / 3_600_000_000_000,
            nanos / 60_000_000_000 % 60
        )
    }
}

/// `512 B`, `1.2 KiB`, `3.4 MiB`...
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Writes `rows` as an aligned table with a heading; errors of damaged traces follow
/// their row.
pub fn write_listing_table(rows: &[TraceListing], out: &mut dyn Write) -> io::Result<()> {
    let dash = || "-".to_string();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.created.clone().unwrap_or_else(dash),
                r.guest.clone().unwrap_or_else(dash),
                match (&r.clock, r.chaos_seed) {
                    (Some(clock), Some(seed)) => format!("{clock} chaos:{seed}"),
                    (clock, _) => clock.clone().unwrap_or_else(dash),
                },
                r.events.map_or_else(dash, |n| n.to_string()),
                r.duration_nanos.map_or_else(dash, format_duration),
                format_size(r.size_bytes),
                r.status.to_string(),
            ]
        })
        .collect();
    let heading = [
        "NAME", "CREATED", "GUEST", "CLOCK", "EVENTS", "DURATION", "SIZE", "STATUS",
    ];
    let mut widths = heading.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let numeric = matches!(i, 4..=6);
            if i + 1 == row.len() {
                text.push_str(c);
            } else if numeric {
                text.push_str(&format!("{c:>w$}  "));
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &heading)?;
    for (row, r) in cells.iter().zip(rows) {
        line(out, &row.each_ref().map(String::as_str))?;
        if let Some(err) = &r.error {
            writeln!(out, "    error: {err}")?;
        }
    }
    Ok(())
}

/// Writes `value` as one pretty-printed JSON document and a newline.
pub fn write_json<T: Serialize + ?Sized>(
    value: &T,
    out: &mut dyn Write,
) -> Result<(), ReportError> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Options of `ttvm dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// First event index to print (0-based).
    pub from: Option<u64>,
    /// Last event index to print (inclusive).
    pub to: Option<u64>,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// How a dump ended.
#[derive(Debug)]
pub enum DumpEnd {
    /// Every requested event was printed.
    Done,
    /// The stream stopped with this error after the printed events (e.g. the trace
    /// ends early, or a chunk is damaged).
    Error(ReadError),
}

#[derive(Serialize)]
struct JsonLine<'a> {
    index: u64,
    #[serde(flatten)]
    record: &'a EventRecord,
}

/// Prints events `[from, to]` of `reader` to `out`, one per line: text
/// `INDEX @POSITION KIND FIELDS...` or a JSON object
/// `{"index":..,"position":..,"kind":"..",...}`.
pub fn dump_events(
    reader: &mut TraceReader,
    opts: &DumpOptions,
    out: &mut dyn Write,
) -> Result<DumpEnd, ReportError> {
    if let Some(from) = opts.from {
        if let Err(e) = reader.seek_event(from) {
            return Ok(DumpEnd::Error(e));
        }
    }
    loop {
        let index = reader.next_index();
        if opts.to.is_some_and(|to| index > to) {
            return Ok(DumpEnd::Done);
        }
        let record = match reader.next_event() {
            None => return Ok(DumpEnd::Done),
            Some(Err(e)) => return Ok(DumpEnd::Error(e)),
            Some(Ok(r)) => r,
        };
        if opts.json {
            serde_json::to_writer(
                &mut *out,
                &JsonLine {
                    index,
                    record: &record,
                },
            )?;
            writeln!(out)?;
        } else {
            writeln!(out, "{index} @{} {}", record.position, record.event)?;
        }
    }
}

/// Per-kind figures of `ttvm dump --stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindStats {
    /// Number of events.
    pub count: u64,
    /// Their encoded (uncompressed) bytes.
    pub raw_bytes: u64,
}

/// `ttvm dump --stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The trace directory.
    pub trace: PathBuf,
    /// Closed cleanly?
    pub complete: bool,
    /// Events counted (within `--from/--to`).
    pub events: u64,
    /// Chunks in the events file.
    pub chunks: u64,
    /// Size of the events file.
    pub events_file_bytes: u64,
    /// Sum of the chunks' raw (decompressed) sizes.
    pub raw_bytes: u64,
    /// Events-file bytes per event (whole file).
    pub bytes_per_event: f64,
    /// Raw bytes per event (whole file).
    pub raw_bytes_per_event: f64,
    /// First and last position of the counted events.
    pub positions: Option<(u64, u64)>,
    /// Per kind.
    pub by_kind: BTreeMap<EventKind, KindStats>,
    /// The error that stopped counting, if any.
    pub error: Option<String>,
}

/// Computes statistics over events `[from, to]`; a read error stops counting and is
/// returned beside the figures gathered so far.
pub fn compute_stats(reader: &mut TraceReader, opts: &DumpOptions) -> (Stats, Option<ReadError>) {
    let chunks = reader.stream().chunks();
    let raw_bytes: u64 = chunks.iter().map(|c| u64::from(c.header.raw_len)).sum();
    let total = reader.event_count().max(1) as f64;
    let mut stats = Stats {
        trace: reader.dir().to_path_buf(),
        complete: reader.is_complete(),
        events: 0,
        chunks: chunks.len() as u64,
        events_file_bytes: reader.stream().file_len(),
        raw_bytes,
        bytes_per_event: reader.stream().file_len() as f64 / total,
        raw_bytes_per_event: raw_bytes as f64 / total,
        positions: None,
        by_kind: BTreeMap::new(),
        error: None,
    };
    let from = opts.from.unwrap_or(0);
    let mut prev = 0;
    if from > 0 {
        if let Err(e) = reader.seek_event(from - 1) {
            stats.error = Some(e.to_string());
            return (stats, Some(e));
        }
        if let Some(Ok(r)) = reader.next_event() {
            prev = r.position;
        }
    }
    let error = loop {
        if opts.to.is_some_and(|to| reader.next_index() > to) {
            break None;
        }
        let rec = match reader.next_event() {
            None => break None,
            Some(Err(e)) => break Some(e),
            Some(Ok(r)) => r,
        };
        let k = stats.by_kind.entry(rec.event.kind()).or_default();
        k.count += 1;
        k.raw_bytes += encoded_len(prev, &rec) as u64;
        prev = rec.position;
        stats.events += 1;
        stats.positions = Some(match stats.positions {
            None => (rec.position, rec.position),
            Some((first, _)) => (first, rec.position),
        });
    };
    stats.error = error.as_ref().map(ToString::to_string);
    (stats, error)
}

/// Writes `stats` as text.
pub fn write_stats(stats: &Stats, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "trace:        {}", stats.trace.display())?;
    let status = if stats.complete {
        "complete"
    } else {
        "incomplete"
    };
    writeln!(out, "status:       {status}")?;
    writeln!(out, "events:       {}", stats.events)?;
    writeln!(out, "chunks:       {}", stats.chunks)?;
    writeln!(
        out,
        "events file:  {} bytes ({:.3} bytes/event)",
        stats.events_file_bytes, stats.bytes_per_event
    )?;
    writeln!(
        out,
        "raw events:   {} bytes ({:.3} bytes/event)",
        stats.raw_bytes, stats.raw_bytes_per_event
    )?;
    if let Some((first, last)) = stats.positions {
        writeln!(out, "positions:    {first} .. {last}")?;
    }
    writeln!(
        out,
        "{:<14} {:>12} {:>14} {:>10}",
        "KIND", "COUNT", "RAW BYTES", "RAW B/EV"
    )?;
    for (kind, k) in &stats.by_kind {
        writeln!(
            out,
            "{:<14} {:>12} {:>14} {:>10.2}",
            kind.name(),
            k.count,
            k.raw_bytes,
            k.raw_bytes as f64 / k.count.max(1) as f64
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_figures() {
        assert_eq!(format_size(10), "10 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_duration(1_500_000_000), "1.500s");
        assert_eq!(format_duration(123_000_000_000), "2m03s");
        assert_eq!(format_duration(3_720_000_000_000), "1h02m");
    }
}
