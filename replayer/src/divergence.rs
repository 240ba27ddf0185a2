//! What a divergence report says: where, what the trace expected, what happened.

use serde::Serialize;
use ttvm_vmm::machine::digest::RegSnapshot;

/// The replay stopped doing what was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// Index of the first trace event that could not be matched (None: past the last one).
    pub event_index: Option<u64>,
    /// Position of the replay when it noticed.
    pub position: u64,
    /// What the trace says should happen.
    pub expected: String,
    /// What the machine did.
    pub actual: String,
    /// The registers when it was noticed.
    pub registers: Option<RegSnapshot>,
    /// Registers that differ from the recording's, when the trace had them.
    pub register_diff: Vec<String>,
    /// What typically causes a divergence of this kind of trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event_index {
            Some(i) => writeln!(
                f,
                "replay diverged at event #{i}, position {}",
                self.position
            )?,
            None => writeln!(f, "replay diverged at position {}", self.position)?,
        }
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  actual:   {}", self.actual)?;
        if !self.register_diff.is_empty() {
            write!(f, "\n  register diff (recorded vs replayed):")?;
            for line in &self.register_diff {
                write!(f, "\n    {line}")?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  likely cause: {hint}")?;
        }
        if let Some(regs) = &self.registers {
            write!(f, "\n  registers at divergence:")?;
            for (name, value) in ttvm_vmm::machine::digest::REG_NAMES
                .iter()
                .zip(regs.0.iter())
            {
                write!(f, "\n    {name:<6} {value:#018x}")?;
            }
        }
        Ok(())
    }
}
