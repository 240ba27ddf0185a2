//! The position clock of a trace, typed: which clock, what one count means, and the
//! parameters replay needs to reproduce it (guest time, the KVM or the counter it ran on).
//!
//! In `header.json` a clock is `{"name": "singlestep" | "pmu", "semantics": text,
//! "params": {...}}`. Format 1 wrote every parameter as a string in a flat map (the
//! recorder wrote it, the replayer parsed it); format 2 writes the typed structs below.
//! [`upgrade_v1`] turns a format-1 clock into format 2 when such a header is read, so
//! older traces keep replaying.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `name` of the single-step clock.
pub const SINGLESTEP_CLOCK: &str = "singlestep";
/// `name` of the performance-counter clock.
pub const PMU_CLOCK: &str = "pmu";

/// The position clock of a trace and what its counts mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClockInfo {
    /// Free text: what one count is (event code, stepping quirks...), for people.
    pub semantics: String,
    /// Which clock, with its parameters (`name` and `params` in the JSON).
    #[serde(flatten)]
    pub params: ClockParams,
}

impl ClockInfo {
    /// The clock's name as in the header: [`SINGLESTEP_CLOCK`] or [`PMU_CLOCK`].
    pub fn name(&self) -> &'static str {
        match self.params {
            ClockParams::Singlestep(_) => SINGLESTEP_CLOCK,
            ClockParams::Pmu(_) => PMU_CLOCK,
        }
    }

    /// The seed of a chaos recording (`ttvm record --chaos`).
    pub fn chaos_seed(&self) -> Option<u64> {
        match &self.params {
            ClockParams::Singlestep(p) => p.chaos.as_ref().map(|c| c.seed),
            ClockParams::Pmu(_) => None,
        }
    }
}

/// A clock and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", content = "params", rename_all = "snake_case")]
pub enum ClockParams {
    /// Positions count single steps.
    Singlestep(SinglestepParams),
    /// Positions count retired conditional branches (ticks).
    Pmu(PmuParams),
}

impl Default for ClockParams {
    fn default() -> Self {
        ClockParams::Singlestep(SinglestepParams::default())
    }
}

/// The single-step clock's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SinglestepParams {
    /// Guest nanoseconds per step.
    pub ns_per_step: u64,
    /// TSC value at boot.
    pub tsc_base: u64,
    /// Wall-clock time at boot, unix nanoseconds.
    pub boot_wall_clock_ns: u64,
    /// The KVM vendor module the trace was recorded on (`kvm_intel`, `kvm_amd`, `kvm_pvm`).
    pub kvm_module: String,
    /// Whether that KVM needed single-step re-armed before every step. Absent in traces
    /// from before this was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_rearm: Option<bool>,
    /// The instructions that KVM ran together with the next one in one single step (the
    /// recorder passed over them in the VMM). Absent in traces from before this was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_merges: Option<Vec<String>>,
    /// The exception vectors at whose handler entries the single-step loop stopped with
    /// hardware breakpoints (on a KVM whose single-step is the guest's trap flag, which
    /// exception delivery clears; empty on other KVMs). Absent in traces from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_exception_breakpoints: Option<Vec<u8>>,
    /// A chaos recording's seed and what it perturbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosParams>,
}

/// What a chaos recording (`ttvm record --chaos`) perturbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChaosParams {
    /// The seed; the same seed perturbs the same way.
    pub seed: u64,
    /// What was perturbed, for people (replay needs nothing of it).
    pub perturbed: String,
}

/// The performance-counter clock's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmuParams {
    /// Which counter counted.
    pub counter: PmuCounter,
    /// The skid margin in branches used when replaying.
    pub skid: u64,
    /// Guest nanoseconds per tick (retired conditional branch).
    pub ns_per_tick: u64,
    /// TSC value at boot.
    pub tsc_base: u64,
    /// Wall-clock time at boot, unix nanoseconds.
    pub boot_wall_clock_ns: u64,
    /// The KVM vendor module the trace was recorded on.
    pub kvm_module: String,
}

/// The branch counter of a pmu-clock trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PmuCounter {
    /// The CPU's performance counter (perf_event_open) with a raw event.
    Hardware {
        /// The CPU vendor string the event belongs to.
        vendor: String,
        /// The raw perf event code (PERF_TYPE_RAW config).
        event: u64,
    },
    /// ttvm's software branch counter (single-stepping; `--clock pmu-emulated`).
    Emulated,
}

impl std::fmt::Display for PmuCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PmuCounter::Hardware { vendor, event } => write!(f, "event {event:#x} on {vendor}"),
            PmuCounter::Emulated => {
                f.write_str("ttvm's software counter of conditional branches decoded by iced-x86")
            }
        }
    }
}

/// Turns a format-1 `clock` (every parameter a string in `params`) into format 2, in
/// place. The error names the parameter that is missing or not what it should be.
pub(crate) fn upgrade_v1(clock: &mut Value) -> Result<(), String> {
    let name = clock
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the clock has no name")?
        .to_string();
    let old = match clock.get("params") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err("the clock parameters are not a map".to_string()),
    };
    let text = |key: &str| -> Result<String, String> {
        old.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the clock parameter {key:?} is missing"))
    };
    let number = |key: &str| -> Result<u64, String> {
        text(key)?
            .parse()
            .map_err(|_| format!("the clock parameter {key:?} is not a number"))
    };
    let optional = |key: &str| old.get(key).and_then(Value::as_str).map(str::to_string);
    let params = match name.as_str() {
        SINGLESTEP_CLOCK => {
            let step_rearm = match optional("step_rearm").as_deref() {
                None => None,
                Some("true") => Some(true),
                Some("false") => Some(false),
                Some(_) => return Err("the clock parameter \"step_rearm\" is not a bool".into()),
            };
            let chaos = match optional("chaos_seed") {
                None => None,
                Some(_) => Some(ChaosParams {
                    seed: number("chaos_seed")?,
                    perturbed: optional("chaos").unwrap_or_default(),
                }),
            };
            ClockParams::Singlestep(SinglestepParams {
                ns_per_step: number("ns_per_step")?,
                tsc_base: number("tsc_base")?,
                boot_wall_clock_ns: number("boot_wall_clock_ns")?,
                kvm_module: text("kvm_module")?,
                step_rearm,
                step_merges: optional("step_merges").map(|m| {
                    m.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect()
                }),
                step_exception_breakpoints: None,
                chaos,
            })
        }
        PMU_CLOCK => {
            let counter = match text("pmu_counter")?.as_str() {
                "hardware" => {
                    let event = text("pmu_event")?;
                    let event = event
                        .strip_prefix("0x")
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                        .ok_or("the clock parameter \"pmu_event\" is not a hex number")?;
                    PmuCounter::Hardware {
                        vendor: text("pmu_vendor")?,
                        event,
                    }
                }
                "emulated" => PmuCounter::Emulated,
                other => return Err(format!("the branch counter {other:?} is not known")),
            };
            ClockParams::Pmu(PmuParams {
                counter,
                skid: number("pmu_skid")?,
                ns_per_tick: number("ns_per_tick")?,
                tsc_base: number("tsc_base")?,
                boot_wall_clock_ns: number("boot_wall_clock_ns")?,
                kvm_module: text("kvm_module")?,
            })
        }
        other => return Err(format!("the clock {other:?} is not one this ttvm knows")),
    };
    let semantics = clock.get("semantics").cloned().unwrap_or_default();
    let upgraded = ClockInfo {
        semantics: serde_json::from_value(semantics)
            .map_err(|_| "the clock semantics are not text".to_string())?,
        params,
    };
    *clock = serde_json::to_value(upgraded).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(name: &str, params: &[(&str, &str)]) -> Value {
        let params: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        serde_json::json!({"name": name, "semantics": "s", "params": params})
    }

    #[test]
    fn typed_params_round_trip_with_name_and_params() {
        let clock = ClockInfo {
            semantics: "s".into(),
            params: ClockParams::Pmu(PmuParams {
                counter: PmuCounter::Hardware {
                    vendor: "GenuineIntel".into(),
                    event: 0x1c4,
                },
                skid: 100,
                ns_per_tick: 7,
                tsc_base: 1,
                boot_wall_clock_ns: 2,
                kvm_module: "kvm_intel".into(),
            }),
        };
        let v = serde_json::to_value(&clock).unwrap();
        assert_eq!(v["name"], "pmu");
        assert_eq!(v["params"]["counter"]["kind"], "hardware");
        assert_eq!(serde_json::from_value::<ClockInfo>(v).unwrap(), clock);
        assert_eq!(clock.name(), PMU_CLOCK);
    }

    #[test]
    fn a_format_1_singlestep_clock_upgrades() {
        let mut c = v1(
            "singlestep",
            &[
                ("ns_per_step", "100"),
                ("tsc_base", "5"),
                ("boot_wall_clock_ns", "6"),
                ("kvm_module", "kvm_pvm"),
                ("step_rearm", "false"),
                ("step_merges", "lfence,rdrand"),
                ("chaos_seed", "42"),
                ("chaos", "irq delays"),
            ],
        );
        upgrade_v1(&mut c).unwrap();
        let clock: ClockInfo = serde_json::from_value(c).unwrap();
        let ClockParams::Singlestep(p) = &clock.params else {
            panic!("{clock:?}")
        };
        assert_eq!(
            (p.ns_per_step, p.tsc_base, p.boot_wall_clock_ns),
            (100, 5, 6)
        );
        assert_eq!(p.step_rearm, Some(false));
        assert_eq!(p.step_merges, Some(vec!["lfence".into(), "rdrand".into()]));
        assert_eq!(clock.chaos_seed(), Some(42));

        // Traces from before the probes: no step_rearm, no step_merges; "" is no merges.
        let base = [
            ("ns_per_step", "100"),
            ("tsc_base", "5"),
            ("boot_wall_clock_ns", "6"),
            ("kvm_module", "kvm_pvm"),
        ];
        let mut c = v1("singlestep", &base);
        upgrade_v1(&mut c).unwrap();
        let clock: ClockInfo = serde_json::from_value(c).unwrap();
        let ClockParams::Singlestep(p) = clock.params else {
            panic!()
        };
        assert_eq!((p.step_rearm, p.step_merges, p.chaos), (None, None, None));
        let mut with_empty = base.to_vec();
        with_empty.push(("step_merges", ""));
        let mut c = v1("singlestep", &with_empty);
        upgrade_v1(&mut c).unwrap();
        assert_eq!(c["params"]["step_merges"], serde_json::json!([]));
    }

    #[test]
    fn a_format_1_pmu_clock_upgrades() {
        let common = [
            ("pmu_skid", "1000"),
            ("ns_per_tick", "100"),
            ("tsc_base", "5"),
            ("boot_wall_clock_ns", "6"),
            ("kvm_module", "kvm_pvm"),
        ];
        let mut hw = common.to_vec();
        hw.extend([
            ("pmu_counter", "hardware"),
            ("pmu_vendor", "AuthenticAMD"),
            ("pmu_event", "0xd1"),
        ]);
        let mut c = v1("pmu", &hw);
        upgrade_v1(&mut c).unwrap();
        let clock: ClockInfo = serde_json::from_value(c).unwrap();
        let ClockParams::Pmu(p) = clock.params else {
            panic!()
        };
        assert_eq!(
            p.counter,
            PmuCounter::Hardware {
                vendor: "AuthenticAMD".into(),
                event: 0xd1
            }
        );
        assert_eq!((p.skid, p.ns_per_tick), (1000, 100));
        let mut em = common.to_vec();
        em.extend([
            ("pmu_counter", "emulated"),
            ("pmu_vendor", "ttvm"),
            (
                "pmu_event",
                "software: conditional branches decoded by iced-x86",
            ),
        ]);
        let mut c = v1("pmu", &em);
        upgrade_v1(&mut c).unwrap();
        assert_eq!(c["params"]["counter"]["kind"], "emulated");
    }

    #[test]
    fn a_bad_format_1_clock_names_what_is_wrong() {
        let mut c = v1("singlestep", &[("ns_per_step", "fast")]);
        assert_eq!(
            upgrade_v1(&mut c).unwrap_err(),
            "the clock parameter \"ns_per_step\" is not a number"
        );
        let mut c = v1("singlestep", &[("ns_per_step", "1")]);
        assert_eq!(
            upgrade_v1(&mut c).unwrap_err(),
            "the clock parameter \"tsc_base\" is missing"
        );
        let mut c = v1("sundial", &[]);
        assert_eq!(
            upgrade_v1(&mut c).unwrap_err(),
            "the clock \"sundial\" is not one this ttvm knows"
        );
        let mut c = serde_json::json!({"name": 3});
        assert!(upgrade_v1(&mut c).is_err());
    }
}
