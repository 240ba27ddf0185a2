//! How a run ends, with the one-line message and the process exit code of each kind.

use serde::{Deserialize, Serialize};

/// Exit codes of `ttvm run` (and later `record`/`replay`) other than the guest's own status.
/// A guest exit via port 0xf4 uses the guest's byte itself (0-255); these codes are only
/// distinguishable from a guest that exits with the same byte by the message on stderr.
pub mod exit_code {
    /// The command line was wrong (clap's convention).
    pub const USAGE: i32 = 2;
    /// ttvm itself failed: bad input, no KVM, an I/O or VMM error.
    pub const VMM_ERROR: i32 = 120;
    /// The guest triple-faulted (KVM shutdown).
    pub const TRIPLE_FAULT: i32 = 121;
    /// The guest halted with no way to be woken.
    pub const HALTED: i32 = 122;
    /// The guest reset the machine.
    pub const RESET: i32 = 123;
    /// KVM could not run or emulate a guest instruction.
    pub const EMULATION_ERROR: i32 = 124;
    /// Replay: the trace ends before the recorded run did (the recorder was killed).
    pub const TRACE_ENDS_EARLY: i32 = 119;
    /// Replay: the guest did something other than what was recorded.
    pub const DIVERGENCE: i32 = 125;
    /// The run was stopped by the user (Ctrl-C) before the guest ended.
    pub const INTERRUPTED: i32 = 130;
}

/// Why a run ended (guest-caused ends; ttvm's own failures are errors instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEnd {
    /// The guest wrote `status` to the debug-exit port.
    GuestExit { status: u8 },
    /// Triple fault: KVM reported a shutdown.
    TripleFault { rip: u64 },
    /// HLT with nothing that could ever wake the guest.
    HaltedForGood { rip: u64, interrupts_enabled: bool },
    /// The guest reset the machine (i8042 reset line).
    Reset { rip: u64 },
    /// KVM failed to run or emulate an instruction.
    EmulationError {
        rip: u64,
        /// The instruction bytes at RIP, as far as they could be read.
        bytes: Vec<u8>,
        detail: String,
    },
}

impl RunEnd {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunEnd::GuestExit { status } => i32::from(*status),
            RunEnd::TripleFault { .. } => exit_code::TRIPLE_FAULT,
            RunEnd::HaltedForGood { .. } => exit_code::HALTED,
            RunEnd::Reset { .. } => exit_code::RESET,
            RunEnd::EmulationError { .. } => exit_code::EMULATION_ERROR,
        }
    }
}

impl std::fmt::Display for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunEnd::GuestExit { status } => write!(f, "guest exited with status {status}"),
            RunEnd::TripleFault { rip } => write!(f, "guest crashed: triple fault at RIP {rip:#x}"),
            RunEnd::HaltedForGood {
                rip,
                interrupts_enabled: false,
            } => write!(
                f,
                "guest halted for good: HLT at RIP {rip:#x} with interrupts disabled and nothing pending"
            ),
            RunEnd::HaltedForGood { rip, .. } => write!(
                f,
                "guest halted for good: HLT at RIP {rip:#x} with no timer armed and no input left"
            ),
            RunEnd::Reset { rip } => write!(f, "guest reset the machine at RIP {rip:#x}"),
            RunEnd::EmulationError { rip, bytes, detail } => {
                write!(f, "KVM could not run the guest at RIP {rip:#x} ({detail}); instruction bytes:")?;
                if bytes.is_empty() {
                    write!(f, " unreadable")?;
                }
                for b in bytes {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
        }
    }
}
