//! The typed events of a trace: what the recorder saw enter the guest, and where.
//!
//! Every event carries a *position*: a count of the trace's position clock (see
//! [`crate::ClockInfo`]) at which the event took effect. Positions in a trace are
//! non-decreasing.
//!
//! The set of events grows over time. On disk each kind has a fixed numeric tag
//! ([`EventKind::tag`]); new kinds get new tags appended after the existing ones, so an
//! old reader meeting a newer kind reports "unknown event kind N: trace made by a newer
//! ttvm?" instead of misreading it (see `FORMAT.md`).
use serde::{Deserialize, Serialize};

/// One event of the stream together with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Position-clock value at which the event took effect.
    pub position: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A nondeterministic input (or a marker) recorded so that replay can reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An interrupt injected into the vCPU at `position`.
    Interrupt {
        /// Interrupt vector.
        vector: u8,
    },
    /// Bytes entered the UART receive FIFO at `position`.
    SerialInput {
        /// The bytes, in arrival order.
        bytes: Vec<u8>,
    },
    /// The serial input source reached EOF (carrier drop) at `position`.
    SerialHangup,
    /// Monotonic host/virtual time (ns since run start) seen by devices.
    HostTime {
        /// Nanoseconds since the start of the run.
        nanos: u64,
    },
    /// Wall-clock time (e.g. for the RTC / time base at boot).
    WallClock {
        /// Nanoseconds since the Unix epoch.
        unix_nanos: u64,
    },
    /// Value returned by an `rdtsc`.
    Rdtsc {
        /// The TSC value the guest saw.
        value: u64,
    },
    /// Values returned by an `rdtscp`.
    Rdtscp {
        /// The TSC value the guest saw.
        value: u64,
        /// The `IA32_TSC_AUX` value (ecx).
        aux: u32,
    },
    /// Result of an `rdrand`.
    Rdrand {
        /// The random value.
        value: u64,
        /// The carry flag result (true = value valid).
        ok: bool,
    },
    /// Result of an `rdseed`.
    Rdseed {
        /// The random value.
        value: u64,
        /// The carry flag result (true = value valid).
        ok: bool,
    },
    /// Data a device took from the host (disk, DMA, ...).
    DeviceData {
        /// Device number (assigned by the VMM).
        device: u16,
        /// The data.
        bytes: Vec<u8>,
    },
    /// Periodic hash of vCPU registers etc., checked by replay.
    StateDigest {
        /// The digest.
        digest: u64,
    },
    /// End of the run.
    End {
        /// Why the run ended.
        reason: EndReason,
    },
    /// A snapshot of the vCPU's general registers, RIP and RFLAGS (in the VMM's order),
    /// recorded periodically so replay can check them and show a diff on divergence.
    Registers {
        /// The register values.
        regs: Vec<u64>,
    },
    /// Pmu clock only: the machine stopped here and what follows (up to the next stop)
    /// happened at this stop. `position` counts retired conditional branches; RIP and RCX
    /// make it exact (rep-string iterations share ticks and RIP). `asynchronous`: the stop
    /// was a counter overflow or a kick (replay converges to it), not a guest exit (replay
    /// meets it by running).
    PmuStop {
        /// The next instruction.
        rip: u64,
        /// RCX there.
        rcx: u64,
        /// An overflow or kick rather than a guest exit.
        asynchronous: bool,
    },
}

/// Why a recording ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EndReason {
    /// The guest asked to exit (e.g. through an exit device) with `status`.
    GuestExit {
        /// Exit status chosen by the guest.
        status: u8,
    },
    /// The vCPU triple-faulted.
    TripleFault {
        /// Instruction pointer at the fault.
        rip: u64,
    },
    /// The vCPU halted with interrupts disabled: nothing can wake it.
    HaltedForGood {
        /// Instruction pointer of the `hlt`.
        rip: u64,
    },
    /// The guest reset the machine.
    Reset,
    /// KVM could not emulate an instruction.
    EmulationError {
        /// Instruction pointer of the failing instruction.
        rip: u64,
        /// What KVM reported.
        detail: String,
    },
    /// The VMM itself failed.
    VmmError {
        /// The error.
        message: String,
    },
    /// The user stopped the recording (Ctrl-C).
    Interrupted,
}

/// The kind of an [`Event`], without its data: used for tags, counts and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// [`Event::Interrupt`]
    Interrupt,
    /// [`Event::SerialInput`]
    SerialInput,
    /// [`Event::SerialHangup`]
    SerialHangup,
    /// [`Event::HostTime`]
    HostTime,
    /// [`Event::WallClock`]
    WallClock,
    /// [`Event::Rdtsc`]
    Rdtsc,
    /// [`Event::Rdtscp`]
    Rdtscp,
    /// [`Event::Rdrand`]
    Rdrand,
    /// [`Event::Rdseed`]
    Rdseed,
    /// [`Event::DeviceData`]
    DeviceData,
    /// [`Event::StateDigest`]
    StateDigest,
    /// [`Event::End`]
    End,
    /// [`Event::Registers`]
    Registers,
    /// [`Event::PmuStop`]
    PmuStop,
}

impl EventKind {
    /// Every kind, in tag order.
    pub const ALL: [EventKind; 14] = [
        EventKind::Interrupt,
        EventKind::SerialInput,
        EventKind::SerialHangup,
        EventKind::HostTime,
        EventKind::WallClock,
        EventKind::Rdtsc,
        EventKind::Rdtscp,
        EventKind::Rdrand,
        EventKind::Rdseed,
        EventKind::DeviceData,
        EventKind::StateDigest,
        EventKind::End,
        EventKind::Registers,
        EventKind::PmuStop,
    ];

    /// Number of kinds this version knows.
    pub const COUNT: usize = Self::ALL.len();

    /// The on-disk tag of this kind. Tags are append-only: never renumber one.
    pub fn tag(self) -> u8 {
        match self {
            EventKind::Interrupt => 1,
            EventKind::SerialInput => 2,
            EventKind::SerialHangup => 3,
            EventKind::HostTime => 4,
            EventKind::WallClock => 5,
            EventKind::Rdtsc => 6,
            EventKind::Rdtscp => 7,
            EventKind::Rdrand => 8,
            EventKind::Rdseed => 9,
            EventKind::DeviceData => 10,
            EventKind::StateDigest => 11,
            EventKind::End => 12,
            EventKind::Registers => 13,
            EventKind::PmuStop => 14,
        }
    }

    /// The kind with on-disk tag `tag`, if this version knows it.
    pub fn from_tag(tag: u8) -> Option<EventKind> {
        Self::ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    /// Index of this kind in [`EventKind::ALL`] (for per-kind counters).
    pub fn index(self) -> usize {
        usize::from(self.tag() - 1)
    }

    /// The snake_case name used in JSON and in `ttvm dump`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Interrupt => "interrupt",
            EventKind::SerialInput => "serial_input",
            EventKind::SerialHangup => "serial_hangup",
            EventKind::HostTime => "host_time",
            EventKind::WallClock => "wall_clock",
            EventKind::Rdtsc => "rdtsc",
            EventKind::Rdtscp => "rdtscp",
            EventKind::Rdrand => "rdrand",
            EventKind::Rdseed => "rdseed",
            EventKind::DeviceData => "device_data",
            EventKind::StateDigest => "state_digest",
            EventKind::End => "end",
            EventKind::Registers => "registers",
            EventKind::PmuStop => "pmu_stop",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Event {
    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Interrupt { .. } => EventKind::Interrupt,
            Event::SerialInput { .. } => EventKind::SerialInput,
            Event::SerialHangup => EventKind::SerialHangup,
            Event::HostTime { .. } => EventKind::HostTime,
            Event::WallClock { .. } => EventKind::WallClock,
            Event::Rdtsc { .. } => EventKind::Rdtsc,
            Event::Rdtscp { .. } => EventKind::Rdtscp,
            Event::Rdrand { .. } => EventKind::Rdrand,
            Event::Rdseed { .. } => EventKind::Rdseed,
            Event::DeviceData { .. } => EventKind::DeviceData,
            Event::StateDigest { .. } => EventKind::StateDigest,
            Event::End { .. } => EventKind::End,
            Event::Registers { .. } => EventKind::Registers,
            Event::PmuStop { .. } => EventKind::PmuStop,
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::GuestExit { status } => write!(f, "guest exit (status {status})"),
            EndReason::TripleFault { rip } => write!(f, "triple fault at rip {rip:#x}"),
            EndReason::HaltedForGood { rip } => write!(f, "halted for good at rip {rip:#x}"),
            EndReason::Reset => f.write_str("reset"),
            EndReason::EmulationError { rip, detail } => {
                write!(f, "emulation error at rip {rip:#x}: {detail}")
            }
            EndReason::VmmError { message } => write!(f, "vmm error: {message}"),
            EndReason::Interrupted => f.write_str("interrupted by the user"),
        }
    }
}

/// Writes `bytes` as a quoted string with non-printable bytes escaped (`"ab\x00\n"`).
fn write_escaped(f: &mut std::fmt::Formatter<'_>, bytes: &[u8]) -> std::fmt::Result {
    f.write_str("\"")?;
    for &b in bytes {
        write!(f, "{}", std::ascii::escape_default(b))?;
    }
    f.write_str("\"")
}

impl std::fmt::Display for Event {
    /// One-line human-readable form, as printed by `ttvm dump`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind())?;
        match self {
            Event::Interrupt { vector } => write!(f, " vector={vector:#04x}"),
            Event::SerialInput { bytes } => {
                f.write_str(" bytes=")?;
                write_escaped(f, bytes)
            }
            Event::SerialHangup => Ok(()),
            Event::HostTime { nanos } => write!(f, " nanos={nanos}"),
            Event::WallClock { unix_nanos } => write!(f, " unix_nanos={unix_nanos}"),
            Event::Rdtsc { value } => write!(f, " value={value:#x}"),
            Event::Rdtscp { value, aux } => write!(f, " value={value:#x} aux={aux:#x}"),
            Event::Rdrand { value, ok } | Event::Rdseed { value, ok } => {
                write!(f, " value={value:#018x} ok={ok}")
            }
            Event::DeviceData { device, bytes } => {
                write!(f, " device={device} len={}", bytes.len())?;
                if bytes.len() <= 32 {
                    f.write_str(" bytes=")?;
                    write_escaped(f, bytes)?;
                }
                Ok(())
            }
            Event::StateDigest { digest } => write!(f, " digest={digest:#018x}"),
            Event::End { reason } => write!(f, " reason={reason}"),
            Event::Registers { regs } => {
                write!(f, " regs=[")?;
                for (i, r) in regs.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    write!(f, "{sep}{r:#x}")?;
                }
                write!(f, "]")
            }
            Event::PmuStop {
                rip,
                rcx,
                asynchronous,
            } => write!(
                f,
                " rip={rip:#x} rcx={rcx:#x} {}",
                if *asynchronous { "async" } else { "exit" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_dense_and_round_trip() {
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(EventKind::from_tag(kind.tag()), Some(*kind));
        }
        assert_eq!(EventKind::from_tag(0), None);
        assert_eq!(EventKind::from_tag(EventKind::ALL.len() as u8 + 1), None);
    }

    #[test]
    fn json_form_is_flat() {
        let rec = EventRecord {
            position: 7,
            event: Event::Interrupt { vector: 32 },
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(json, r#"{"position":7,"kind":"interrupt","vector":32}"#);
        let back: EventRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }
}
