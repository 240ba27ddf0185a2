//! Where the guest's serial output was written: every byte with the position of the
//! instruction that wrote it, and the lines of the output with the position of their
//! first byte (`ttvm replay --goto-output`, gdb's `monitor output` / `goto-output`).
//!
//! Exactness: the stepped loop asks the driver's `boundary(pos)` at every position before
//! it does anything there, and a device access (the OUT that hands a byte to the UART)
//! happens only inside the step of the instruction at that position, before the next
//! `boundary` call. The replay driver keeps the last `pos` in a shared cell, and
//! [`TaggedOutput`] stamps every byte the UART emits with it. Seeking to that position
//! leaves the machine just before that instruction: RIP is the OUT.
//!
//! The index is built by replaying the whole trace once (`build_transcript`) and cached in
//! the trace directory (`ttvm_logs::output_index`).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use regex::Regex;
use ttvm_logs::output_index::{self, OutputIndexError, SerialTranscript};
use ttvm_vmm::machine::devices::serial::SerialOutput;
use ttvm_vmm::run::singlestep::{Position, SteppedError};

use crate::driver::{DriverError, ReplayDriver, StopCause};
use crate::{driver_error, open_checked, prepare_reader, ReplayError};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("bad regular expression {pattern:?}: {detail}")]
    BadRegex { pattern: String, detail: String },
    #[error("no line of the guest's output matches {pattern:?} ({lines} lines)")]
    NoMatch { pattern: String, lines: usize },
    #[error("only {count} lines of the guest's output match {pattern:?}, not {nth}")]
    NotThatMany {
        pattern: String,
        nth: usize,
        count: usize,
    },
    #[error("match numbers start at 1")]
    ZeroNth,
    #[error("indexing the guest's output was interrupted")]
    Interrupted,
    #[error("cannot index the guest's output: {0}")]
    Replay(#[from] ReplayError),
    #[error("cannot index the guest's output: {0}")]
    Index(#[from] OutputIndexError),
}

/// Serial output that records the position of every byte (and passes it on to `inner`).
pub struct TaggedOutput {
    position: Arc<AtomicU64>,
    transcript: Arc<Mutex<SerialTranscript>>,
    inner: Option<SerialOutput>,
}

impl TaggedOutput {
    /// Stamps bytes with the position in `position` (a driver's `position_cell`).
    pub fn new(
        position: Arc<AtomicU64>,
        transcript: Arc<Mutex<SerialTranscript>>,
        inner: Option<SerialOutput>,
    ) -> Self {
        TaggedOutput {
            position,
            transcript,
            inner,
        }
    }
}

impl Write for TaggedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.inner.as_mut() {
            Some(out) => out.write(buf)?,
            None => buf.len(),
        };
        if let Ok(mut t) = self.transcript.lock() {
            t.push(self.position.load(Ordering::Relaxed), &buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().map_or(Ok(()), |o| o.flush())
    }
}

/// Replays `trace` from start to end and returns its serial output with positions (up to
/// where the trace stops, for one whose recorder did not finish). Setting `stop` ends it
/// with [`OutputError::Interrupted`] (a part is never taken for the whole).
pub fn build_transcript(
    trace: &Path,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<SerialTranscript, OutputError> {
    let reader = open_checked(trace)?;
    if crate::ticked::is_pmu(reader.header()) {
        return Err(crate::no_seeking_in_pmu_traces().into());
    }
    let transcript = Arc::new(Mutex::new(SerialTranscript::default()));
    let position = Arc::new(AtomicU64::new(0));
    let out = TaggedOutput::new(position.clone(), transcript.clone(), None);
    let (mut machine, reader, time, facts) = prepare_reader(reader, Box::new(out))?;
    let mut driver = ReplayDriver::new(reader, facts, stop).map_err(driver_error)?;
    driver.set_position_cell(position);
    if progress {
        driver.show_progress();
    }
    let result = machine.run_stepped(&mut driver, time);
    match result {
        Ok(_) if driver.stop_cause == Some(StopCause::UserStop) => {
            return Err(OutputError::Interrupted)
        }
        Ok(_) | Err(SteppedError::Driver(DriverError::EndsEarly { .. })) => {}
        Err(SteppedError::Machine(e)) => return Err(ReplayError::from(e).into()),
        Err(SteppedError::Driver(e)) => return Err(driver_error(e).into()),
    }
    drop(machine);
    let t = transcript.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(t)
}

/// The serial output of a trace as lines, each with the position of its first byte.
#[derive(Debug, Clone, Default)]
pub struct OutputIndex {
    transcript: SerialTranscript,
    /// Byte ranges of the lines (each with its '\n', the last one perhaps without).
    lines: Vec<(usize, usize)>,
}

/// One line of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// 1-based line number in the whole output.
    pub line: usize,
    /// The position of the instruction that wrote the line's first byte.
    pub position: Position,
    /// Offset of the first byte in the whole output.
    pub offset: usize,
    /// The text, without the line end ("\n", "\r\n"), lossily UTF-8.
    pub text: String,
}

impl OutputIndex {
    pub fn new(transcript: SerialTranscript) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &b) in transcript.bytes.iter().enumerate() {
            if b == b'\n' {
                lines.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < transcript.bytes.len() {
            lines.push((start, transcript.bytes.len()));
        }
        OutputIndex { transcript, lines }
    }

    pub fn transcript(&self) -> &SerialTranscript {
        &self.transcript
    }

    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    fn line(&self, k: usize) -> OutputLine {
        let (s, e) = self.lines[k];
        let mut body = &self.transcript.bytes[s..e];
        if let Some(b) = body.strip_suffix(b"\n") {
            body = b.strip_suffix(b"\r").unwrap_or(b);
        }
        OutputLine {
            line: k + 1,
            position: self.transcript.positions[s],
            offset: s,
            text: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// Every line, in order.
    pub fn lines(&self) -> impl Iterator<Item = OutputLine> + '_ {
        (0..self.lines.len()).map(|k| self.line(k))
    }

    /// The lines `pattern` matches (anywhere in the line), in order.
    pub fn matching(&self, pattern: &str) -> Result<Vec<OutputLine>, OutputError> {
        let re = compile(pattern)?;
        Ok(self.lines().filter(|l| re.is_match(&l.text)).collect())
    }

    /// The `nth` (from 1) line `pattern` matches.
    pub fn find(&self, pattern: &str, nth: usize) -> Result<OutputLine, OutputError> {
        if nth == 0 {
            return Err(OutputError::ZeroNth);
        }
        let found = self.matching(pattern)?;
        let count = found.len();
        match found.into_iter().nth(nth - 1) {
            Some(line) => Ok(line),
            None if count == 0 => Err(OutputError::NoMatch {
                pattern: pattern.to_string(),
                lines: self.lines.len(),
            }),
            None => Err(OutputError::NotThatMany {
                pattern: pattern.to_string(),
                nth,
                count,
            }),
        }
    }
}

/// Compiles a user's pattern, with a clear error.
pub fn compile(pattern: &str) -> Result<Regex, OutputError> {
    Regex::new(pattern).map_err(|e| OutputError::BadRegex {
        pattern: pattern.to_string(),
        detail: e.to_string(),
    })
}

/// The output index of `trace`: from its cache file if that belongs to this trace, else
/// built by one replay and cached (a closed trace only; a trace directory that cannot be
/// written keeps it in memory). `announce` is told before a build starts.
pub fn load_or_build(
    trace: &Path,
    progress: bool,
    stop: Arc<AtomicBool>,
    announce: impl FnOnce(),
) -> Result<OutputIndex, OutputError> {
    let key = output_index::output_index_key(trace)?;
    if let Some(key) = &key {
        match output_index::read_output_index(trace, key) {
            Ok(Some(t)) => return Ok(OutputIndex::new(t)),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}; rebuilding it"),
        }
    }
    announce();
    let t = build_transcript(trace, progress, stop)?;
    if let Some(key) = &key {
        match output_index::write_output_index(trace, key, &t) {
            Ok(()) => tracing::debug!(bytes = t.bytes.len(), "output index written"),
            Err(e) => tracing::warn!("the output index is not cached: {e}"),
        }
    }
    Ok(OutputIndex::new(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(parts: &[(u64, &[u8])]) -> OutputIndex {
        let mut t = SerialTranscript::default();
        for (p, b) in parts {
            t.push(*p, b);
        }
        OutputIndex::new(t)
    }

    #[test]
    fn lines_carry_their_first_byte_position() {
        let ix = index(&[(5, b"ab"), (9, b"\r\n"), (12, b"cd\n"), (20, b"tail")]);
        let lines: Vec<_> = ix.lines().map(|l| (l.line, l.position, l.text)).collect();
        assert_eq!(
            lines,
            vec![
                (1, 5, "ab".to_string()),
                (2, 12, "cd".to_string()),
                (3, 20, "tail".to_string())
            ]
        );
        assert_eq!(ix.find("d$", 1).unwrap().position, 12);
        assert_eq!(ix.find("[a-z]", 3).unwrap().offset, 7);
    }

    #[test]
    fn errors_are_clear() {
        let ix = index(&[(1, b"x\ny\n")]);
        let e = ix.find("(", 1).unwrap_err();
        assert!(matches!(e, OutputError::BadRegex { .. }), "{e}");
        let e = ix.find("z", 1).unwrap_err().to_string();
        assert_eq!(e, "no line of the guest's output matches \"z\" (2 lines)");
        let e = ix.find("x|y", 3).unwrap_err().to_string();
        assert_eq!(e, "only 2 lines of the guest's output match \"x|y\", not 3");
        assert!(matches!(ix.find("x", 0), Err(OutputError::ZeroNth)));
        assert!(index(&[]).find("", 1).is_err());
    }
}
