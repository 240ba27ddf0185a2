//! `monitor` commands, in rr's spirit: `when`, `seek POS|start|end`, `checkpoint`,
//! `checkpoints`, `info trace`.

use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd};
use ttvm_replayer::store::Origin;
use ttvm_replayer::timeline::Arrival;

use crate::target::{DebugTarget, GdbError};

const HELP: &str = "ttvm monitor commands:
  when                 the current position and the next trace event
  seek POS|start|end   move to a position (then `maintenance flush register-cache`)
  checkpoint           keep a checkpoint of the current position in memory
  checkpoints          list the checkpoints (in memory and in the trace)
  info trace           the trace: directory, guest, length, events, checkpoints";

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
            ["help"] | [] => outputln!(out, "{HELP}"),
            _ => {
                outputln!(out, "unknown monitor command {cmd:?}");
                outputln!(out, "{HELP}");
            }
        }
        Ok(())
    }
}
