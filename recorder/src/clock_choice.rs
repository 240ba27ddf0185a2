//! `--clock auto|pmu|singlestep|pmu-emulated`: which position clock a recording uses,
//! decided from what this host can do (the PMU probe and self-test behind `ttvm doctor`),
//! with the reason said out loud.

use ttvm_vmm::run::pmu::probe::{BranchEvent, PmuProbe};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockChoice {
    /// The performance-counter clock when it works here, else single-stepping.
    #[default]
    Auto,
    Pmu,
    Singlestep,
    /// The pmu clock's loop with ttvm's software branch counter instead of the CPU's: as
    /// slow as single-stepping, for checking the pmu clock on hosts without a PMU.
    PmuEmulated,
}

impl std::str::FromStr for ClockChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ClockChoice::Auto),
            "pmu" => Ok(ClockChoice::Pmu),
            "singlestep" => Ok(ClockChoice::Singlestep),
            "pmu-emulated" => Ok(ClockChoice::PmuEmulated),
            other => Err(format!(
                "unknown clock {other:?}: use auto, pmu, singlestep or pmu-emulated"
            )),
        }
    }
}

/// The clock a recording runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordClock {
    Singlestep,
    /// The CPU's counter of retired conditional branches.
    Pmu(BranchEvent),
    /// ttvm's software branch counter, overflowing up to `max_skid` branches late.
    PmuEmulated {
        max_skid: u64,
        seed: u64,
    },
}

/// The software counter's lateness: like a real PMU interrupt, it lands up to this many
/// branches after the armed count (the replay's margin is one more).
pub const EMULATED_MAX_SKID: u64 = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error(
        "--clock pmu: this host cannot count the guest's retired conditional branches: \
         {reason}. Record with --clock singlestep (or auto); `ttvm doctor` explains the host"
    )]
    NoPmu { reason: String },
}

/// The clock a recording uses, and a one-line note when `auto` had to fall back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSelection {
    pub clock: RecordClock,
    pub note: Option<String>,
}

fn short_reason(probe: &PmuProbe) -> String {
    probe
        .error
        .clone()
        .unwrap_or_else(|| "no branch event known for this CPU".to_string())
}

/// Decides the clock for `choice` on a host whose PMU probe says `probe`. `self_test`
/// checks that the counter counts guest branches exactly (auto uses the pmu clock only
/// then); it is not run for an explicit `pmu`.
pub fn select(
    choice: ClockChoice,
    probe: &PmuProbe,
    self_test: impl FnOnce(&BranchEvent) -> Result<(), String>,
) -> Result<ClockSelection, ClockError> {
    let event = probe.event.clone().filter(|_| probe.available());
    let plain = |clock| ClockSelection { clock, note: None };
    match (choice, event) {
        (ClockChoice::Singlestep, _) => Ok(plain(RecordClock::Singlestep)),
        (ClockChoice::PmuEmulated, _) => Ok(plain(RecordClock::PmuEmulated {
            max_skid: EMULATED_MAX_SKID,
            seed: 0x5eed,
        })),
        (ClockChoice::Pmu, Some(event)) => Ok(plain(RecordClock::Pmu(event))),
        (ClockChoice::Pmu, None) => Err(ClockError::NoPmu {
            reason: short_reason(probe),
        }),
        (ClockChoice::Auto, Some(event)) => Ok(match self_test(&event) {
            Ok(()) => plain(RecordClock::Pmu(event)),
            Err(why) => ClockSelection {
                clock: RecordClock::Singlestep,
                note: Some(format!(
                    "--clock auto: recording with singlestep: the guest branch counter opens \
                     here but failed its self-test ({why})"
                )),
            },
        }),
        (ClockChoice::Auto, None) => Ok(ClockSelection {
            clock: RecordClock::Singlestep,
            note: Some(format!(
                "--clock auto: recording with singlestep: no guest branch counter here ({})",
                short_reason(probe)
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(error: Option<&str>) -> PmuProbe {
        PmuProbe {
            event: ttvm_vmm::run::pmu::probe::branch_event(),
            error: error.map(str::to_string),
            perf_event_paranoid: Some(2),
        }
    }

    fn passes(_: &BranchEvent) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn choices_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!("auto".parse(), Ok(ClockChoice::Auto));
        assert_eq!("pmu".parse(), Ok(ClockChoice::Pmu));
        assert_eq!("singlestep".parse(), Ok(ClockChoice::Singlestep));
        assert_eq!("pmu-emulated".parse(), Ok(ClockChoice::PmuEmulated));
        let err = "tsc".parse::<ClockChoice>().unwrap_err();
        assert!(
            err.contains("auto, pmu, singlestep or pmu-emulated"),
            "{err}"
        );
    }

    #[test]
    fn without_a_pmu_pmu_fails_and_auto_falls_back_with_the_reason() {
        let none = probe(Some("perf_event_open: No such file or directory"));
        let err = select(ClockChoice::Pmu, &none, passes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(err.contains("--clock singlestep"), "{err}");
        let auto = select(ClockChoice::Auto, &none, passes).unwrap();
        assert_eq!(auto.clock, RecordClock::Singlestep);
        let note = auto.note.unwrap();
        assert!(
            note.contains("singlestep") && note.contains("No such file"),
            "{note}"
        );
        let plain = select(ClockChoice::Singlestep, &none, passes).unwrap();
        assert_eq!(plain.note, None);
        let emulated = select(ClockChoice::PmuEmulated, &none, passes).unwrap();
        assert!(matches!(emulated.clock, RecordClock::PmuEmulated { .. }));
    }

    #[test]
    fn with_a_pmu_auto_takes_it_only_if_the_self_test_passes() {
        let works = probe(None);
        let Some(event) = works.event.clone() else {
            return; // an unknown CPU vendor: no event to pretend with
        };
        let pmu = RecordClock::Pmu(event);
        assert_eq!(select(ClockChoice::Pmu, &works, passes).unwrap().clock, pmu);
        let auto = select(ClockChoice::Auto, &works, passes).unwrap();
        assert_eq!((auto.clock, auto.note), (pmu, None));
        let failing = select(ClockChoice::Auto, &works, |_| Err("counted 2999".into())).unwrap();
        assert_eq!(failing.clock, RecordClock::Singlestep);
        assert!(failing.note.unwrap().contains("counted 2999"));
    }
}
