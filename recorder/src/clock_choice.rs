//! `--clock auto|pmu|singlestep`: which position clock a recording uses, decided from what
//! this host can do (the PMU probe behind `ttvm doctor`), with the reason said out loud.

use ttvm_vmm::pmu::probe::PmuProbe;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockChoice {
    /// The performance-counter clock when it works here, else single-stepping.
    #[default]
    Auto,
    Pmu,
    Singlestep,
}

impl std::str::FromStr for ClockChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ClockChoice::Auto),
            "pmu" => Ok(ClockChoice::Pmu),
            "singlestep" => Ok(ClockChoice::Singlestep),
            other => Err(format!(
                "unknown clock {other:?}: use auto, pmu or singlestep"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error(
        "--clock pmu: this host cannot count the guest's retired conditional branches: \
         {reason}. Record with --clock singlestep (or auto); `ttvm doctor` explains the host"
    )]
    NoPmu { reason: String },
    #[error(
        "--clock pmu: the guest branch counter works on this host, but this ttvm cannot record \
         with it yet (the free-running record/replay loop is not built; the counter, its \
         overflow signal and the convergence to exact positions are, see `ttvm doctor`). \
         Record with --clock singlestep (or auto)"
    )]
    PmuLoopMissing,
}

/// The clock a recording uses, and a one-line note when `auto` had to fall back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSelection {
    pub note: Option<String>,
}

fn short_reason(probe: &PmuProbe) -> String {
    probe
        .error
        .clone()
        .unwrap_or_else(|| "no branch event known for this CPU".to_string())
}

/// Decides the clock for `choice` on a host whose PMU probe says `probe`.
pub fn select(choice: ClockChoice, probe: &PmuProbe) -> Result<ClockSelection, ClockError> {
    match choice {
        ClockChoice::Singlestep => Ok(ClockSelection { note: None }),
        ClockChoice::Pmu if !probe.available() => Err(ClockError::NoPmu {
            reason: short_reason(probe),
        }),
        ClockChoice::Pmu => Err(ClockError::PmuLoopMissing),
        ClockChoice::Auto => Ok(ClockSelection {
            note: Some(if probe.available() {
                "--clock auto: recording with singlestep: the guest branch counter works here, \
                 but this ttvm cannot record with it yet"
                    .to_string()
            } else {
                format!(
                    "--clock auto: recording with singlestep: no guest branch counter here ({})",
                    short_reason(probe)
                )
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(error: Option<&str>) -> PmuProbe {
        PmuProbe {
            event: ttvm_vmm::pmu::probe::branch_event(),
            error: error.map(str::to_string),
            perf_event_paranoid: Some(2),
        }
    }

    #[test]
    fn choices_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!("auto".parse(), Ok(ClockChoice::Auto));
        assert_eq!("pmu".parse(), Ok(ClockChoice::Pmu));
        assert_eq!("singlestep".parse(), Ok(ClockChoice::Singlestep));
        let err = "tsc".parse::<ClockChoice>().unwrap_err();
        assert!(err.contains("auto, pmu or singlestep"), "{err}");
    }

    #[test]
    fn without_a_pmu_pmu_fails_and_auto_falls_back_with_the_reason() {
        let none = probe(Some("perf_event_open: No such file or directory"));
        let err = select(ClockChoice::Pmu, &none).unwrap_err().to_string();
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(err.contains("--clock singlestep"), "{err}");
        let note = select(ClockChoice::Auto, &none).unwrap().note.unwrap();
        assert!(
            note.contains("singlestep") && note.contains("No such file"),
            "{note}"
        );
        assert_eq!(select(ClockChoice::Singlestep, &none).unwrap().note, None);
    }

    #[test]
    fn with_a_pmu_the_missing_loop_is_said_not_hidden() {
        let works = probe(None);
        if !works.available() {
            return; // an unknown CPU vendor: no event to pretend with
        }
        assert_eq!(
            select(ClockChoice::Pmu, &works),
            Err(ClockError::PmuLoopMissing)
        );
        let note = select(ClockChoice::Auto, &works).unwrap().note.unwrap();
        assert!(note.contains("cannot record with it yet"), "{note}");
    }
}
