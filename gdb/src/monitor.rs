//! `monitor` commands, in rr's spirit: `when`, `seek POS|start|end`, `checkpoint`,
//! `checkpoints`, `info trace`; and the guest's serial output: `output [REGEX]`,
//! `goto-output REGEX [N]`, `serial`.

use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd};
use ttvm_replayer::store::Origin;
use ttvm_replayer::timeline::Arrival;

use crate::target::{DebugTarget, GdbError};

const HELP: &str = "ttvm monitor commands:
  when                 the current position and the next trace event
  seek POS|start|end   move to a position (then `maintenance flush register-cache`)
  checkpoint           keep a checkpoint of the current position in memory
  checkpoints          list the checkpoints (in memory and in the trace)
  info trace           the trace: directory, guest, length, events, checkpoints
  output [REGEX]       the guest's serial output lines (those REGEX matches), numbered
                       as goto-output counts them, with the position of their first byte
  goto-output REGEX [N]  move to the instruction that wrote the first byte of the Nth
                       (default 1st) line REGEX matches (then `maintenance flush
                       register-cache`); a final number is N: `goto-output 42 1`
  serial               the guest's serial output up to the current position";

impl MonitorCmd for DebugTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), GdbError> {
        let cmd = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["when"] => {
                let t = self.timeline();
                let next = match t.driver().next_event() {
                    Some((i, rec)) => format!(
                        "next event #{i} at position {}: {}",
                        rec.position, rec.event
                    ),
                    None => "no more events".to_string(),
                };
                outputln!(out, "position {}; {next}", t.position());
            }
            ["seek", to] => {
                let target = match *to {
                    "start" => Some(0),
                    "end" => Some(u64::MAX),
                    n => n.parse().ok(),
                };
                let Some(target) = target else {
                    outputln!(
                        out,
                        "seek: {to:?} is not a position (a number, start or end)"
                    );
                    return Ok(());
                };
                let arrival = self.timeline_mut().seek(target)?;
                let pos = self.timeline().position();
                let note = match arrival {
                    Arrival::End(end) => format!(" (the end of the recording: {end})"),
                    Arrival::TraceStops => " (the trace stops here)".to_string(),
                    _ => String::new(),
                };
                outputln!(out, "at position {pos}{note}");
                outputln!(
                    out,
                    "(gdb still shows the old state: run `maintenance flush register-cache`)"
                );
            }
            ["checkpoint"] => {
                self.timeline_mut().take_checkpoint()?;
                outputln!(
                    out,
                    "checkpoint kept at position {}",
                    self.timeline().position()
                );
            }
            ["checkpoints"] => {
                let t = self.timeline();
                let store = t.store();
                outputln!(
                    out,
                    "in memory: {} checkpoints, {} KiB of {} KiB",
                    store.len(),
                    store.used_bytes() / 1024,
                    store.budget() / 1024
                );
                for (_, pos, origin, bytes) in store.list() {
                    let from = match origin {
                        Origin::Boot => "boot state".to_string(),
                        Origin::Trace(id) => format!("trace checkpoint {id}"),
                        Origin::Replay => "replayer".to_string(),
                    };
                    outputln!(out, "  position {pos:>10}  {:>6} KiB  {from}", bytes / 1024);
                }
                outputln!(out, "in the trace: {}", t.trace_checkpoints().len());
                for c in t.trace_checkpoints() {
                    let state = c.unusable.as_deref().unwrap_or("ok");
                    outputln!(
                        out,
                        "  #{:<4} position {:>10}  {:>8} bytes  {state}",
                        c.id,
                        c.position,
                        c.disk_size
                    );
                }
            }
            ["info", "trace"] => {
                let t = self.timeline();
                let header = t.driver().header();
                outputln!(out, "trace: {}", t.trace_dir().display());
                outputln!(out, "guest: {}", header.guest_name);
                match header.close.as_ref() {
                    Some(close) => outputln!(
                        out,
                        "length: {} positions; ended: {}",
                        close.final_position,
                        close.end_reason
                    ),
                    None => outputln!(out, "length: unknown (the trace was not closed)"),
                }
                outputln!(out, "events: {}", t.driver().reader().event_count());
                outputln!(
                    out,
                    "checkpoints in the trace: {}",
                    t.trace_checkpoints().len()
                );
                outputln!(out, "clock: {}", header.clock.name());
                outputln!(out, "now at position {}", t.position());
            }
            ["output", ..] => {
                let pattern = rest_after(&cmd, "output");
                let found = self
                    .output_index()
                    .map_err(|e| e.to_string())
                    .and_then(|ix| {
                        let lines = ix.matching(pattern).map_err(|e| e.to_string())?;
                        Ok((lines, ix.line_count()))
                    });
                let (lines, total) = match found {
                    Ok(found) => found,
                    Err(e) => {
                        outputln!(out, "output: {e}");
                        return Ok(());
                    }
                };
                outputln!(
                    out,
                    "{} of {total} lines; N, position of the first byte, text:",
                    lines.len()
                );
                for (n, line) in lines.iter().enumerate() {
                    outputln!(out, "{:>5} {:>12}  {}", n + 1, line.position, line.text);
                }
            }
            ["goto-output", ..] => {
                let (pattern, nth) = pattern_and_nth(rest_after(&cmd, "goto-output"));
                if pattern.is_empty() {
                    outputln!(
                        out,
                        "goto-output: give a regular expression (and a match number)"
                    );
                    return Ok(());
                }
                let found = self
                    .output_index()
                    .map_err(|e| e.to_string())
                    .and_then(|ix| ix.find(pattern, nth).map_err(|e| e.to_string()));
                let line = match found {
                    Ok(line) => line,
                    Err(e) => {
                        outputln!(out, "goto-output: {e}");
                        return Ok(());
                    }
                };
                self.timeline_mut().seek(line.position)?;
                outputln!(
                    out,
                    "at position {}: the instruction that wrote the first byte of line {} \
                     (match {nth}): {}",
                    self.timeline().position(),
                    line.line,
                    line.text
                );
                outputln!(
                    out,
                    "(gdb still shows the old state: run `maintenance flush register-cache`)"
                );
            }
            ["serial"] => {
                let pos = self.timeline().position();
                let bytes = match self.output_index() {
                    Ok(ix) => ix.transcript().before(pos).to_vec(),
                    Err(e) => {
                        outputln!(out, "serial: {e}");
                        return Ok(());
                    }
                };
                out.write_raw(&bytes);
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    outputln!(out, "");
                }
                outputln!(out, "({} bytes written before position {pos})", bytes.len());
            }
            ["help"] | [] => outputln!(out, "{HELP}"),
            _ => {
                outputln!(out, "unknown monitor command {cmd:?}");
                outputln!(out, "{HELP}");
            }
        }
        Ok(())
    }
}

/// What follows the command word `word` in `cmd`, without surrounding blanks.
fn rest_after<'a>(cmd: &'a str, word: &str) -> &'a str {
    let cmd = cmd.trim_start();
    cmd.strip_prefix(word).unwrap_or("").trim()
}

/// `REGEX [N]`: a last word that is a number is N, if a pattern remains before it.
fn pattern_and_nth(rest: &str) -> (&str, usize) {
    if let Some((pattern, last)) = rest.rsplit_once(char::is_whitespace) {
        if let Ok(n) = last.parse::<usize>() {
            if !pattern.trim().is_empty() {
                return (pattern.trim(), n);
            }
        }
    }
    (rest, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_and_match_number() {
        assert_eq!(pattern_and_nth("hello"), ("hello", 1));
        assert_eq!(pattern_and_nth("hello 2"), ("hello", 2));
        assert_eq!(pattern_and_nth("hello from 3"), ("hello from", 3));
        assert_eq!(pattern_and_nth("42"), ("42", 1));
        assert_eq!(pattern_and_nth("42 0"), ("42", 0));
        assert_eq!(rest_after("  output  a b ", "output"), "a b");
        assert_eq!(rest_after("output", "output"), "");
    }
}
