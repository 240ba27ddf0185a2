//! Clock descriptions for the trace header, built from the machine's clock settings, and
//! the settings read back from a header.

use ttvm_logs::{ClockInfo, ClockParams, PmuCounter, PmuParams, SinglestepParams};
use ttvm_vmm::host::step_probe::StepSemantics;
use ttvm_vmm::run::pmu::probe::BranchEvent;
use ttvm_vmm::run::pmu::ticked::TickTime;
use ttvm_vmm::run::singlestep::{BootFacts, TimeConfig};

/// The single-step clock's description in the header: everything replay needs to
/// reproduce guest time, and what the positions mean.
pub fn singlestep_clock(
    time: TimeConfig,
    facts: BootFacts,
    kvm_module: &str,
    semantics: StepSemantics,
) -> ClockInfo {
    ClockInfo {
        semantics: format!(
            "positions count KVM_GUESTDBG_SINGLESTEP steps since boot on {kvm_module} (one more \
             per VMM-emulated RDTSC/RDTSCP/RDRAND/RDSEED/RDMSR-TSC/HLT, per instruction KVM \
             could not emulate, and per instruction in step_merges); guest ns = steps * \
             {} + time skipped while halted; TSC = tsc_base + guest ns",
            time.ns_per_step
        ),
        params: ClockParams::Singlestep(SinglestepParams {
            ns_per_step: time.ns_per_step,
            tsc_base: facts.tsc_base,
            boot_wall_clock_ns: facts.wall_clock_ns,
            kvm_module: kvm_module.to_string(),
            step_rearm: Some(semantics.rearm_each_step),
            step_merges: Some(merge_names(&semantics.merges.names())),
            step_exception_breakpoints: Some(semantics.watched_exceptions().to_vec()),
            chaos: None,
        }),
    }
}

/// The names in a comma-separated list of merging instructions.
fn merge_names(names: &str) -> Vec<String> {
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// The CPU's counter with `event`.
pub fn hardware_counter(event: &BranchEvent) -> PmuCounter {
    PmuCounter::Hardware {
        vendor: event.vendor.clone(),
        event: event.config,
    }
}

/// The pmu clock's description in the header.
pub fn pmu_clock(
    time: TickTime,
    facts: BootFacts,
    kvm_module: &str,
    counter: PmuCounter,
    margin: u64,
) -> ClockInfo {
    let (kind, event, vendor) = match &counter {
        PmuCounter::Hardware { vendor, event } => {
            ("hardware", format!("{event:#x}"), vendor.as_str())
        }
        PmuCounter::Emulated => (
            "emulated",
            "software: conditional branches decoded by iced-x86".to_string(),
            "ttvm",
        ),
    };
    ClockInfo {
        semantics: format!(
            "positions count retired conditional branches in guest mode ({kind} counter, \
             {event} on {vendor}), made exact by RIP and RCX at each logged stop; guest ns = \
             ticks * {} + time skipped while halted; the guest reads the host's TSC (not \
             recorded) and sees no RDRAND/RDSEED",
            time.ns_per_tick
        ),
        params: ClockParams::Pmu(PmuParams {
            counter,
            skid: margin,
            ns_per_tick: time.ns_per_tick,
            tsc_base: facts.tsc_base,
            boot_wall_clock_ns: facts.wall_clock_ns,
            kvm_module: kvm_module.to_string(),
        }),
    }
}

/// The single-step clock's settings recorded in `params`.
pub fn singlestep_time(params: &SinglestepParams) -> (TimeConfig, BootFacts) {
    (
        TimeConfig {
            ns_per_step: params.ns_per_step,
        },
        BootFacts {
            wall_clock_ns: params.boot_wall_clock_ns,
            tsc_base: params.tsc_base,
        },
    )
}

/// The pmu clock's settings recorded in `params`.
pub fn pmu_time(params: &PmuParams) -> (TickTime, BootFacts) {
    (
        TickTime {
            ns_per_tick: params.ns_per_tick,
        },
        BootFacts {
            wall_clock_ns: params.boot_wall_clock_ns,
            tsc_base: params.tsc_base,
        },
    )
}

/// Whether the instructions this KVM merges into one single step (`here`, as
/// `StepMerges::names` gives them) are the ones recorded.
pub fn same_merges(recorded: &[String], here: &str) -> bool {
    recorded.join(",") == here
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_back_as_recorded() {
        let time = TimeConfig { ns_per_step: 37 };
        let facts = BootFacts {
            wall_clock_ns: 11,
            tsc_base: 13,
        };
        let semantics = StepSemantics {
            rearm_each_step: true,
            merges: Default::default(),
            user_mode: false,
            exception_breakpoints: true,
        };
        let clock = singlestep_clock(time, facts, "kvm_pvm", semantics);
        let ClockParams::Singlestep(p) = &clock.params else {
            panic!("{clock:?}")
        };
        assert_eq!(singlestep_time(p), (time, facts));
        assert_eq!(p.step_merges, Some(Vec::new()));
        assert_eq!(p.step_rearm, Some(true));
        assert_eq!(p.step_exception_breakpoints, Some(vec![14, 13, 6, 0]));

        let tick = TickTime { ns_per_tick: 5 };
        let clock = pmu_clock(tick, facts, "kvm_pvm", PmuCounter::Emulated, 1000);
        let ClockParams::Pmu(p) = &clock.params else {
            panic!("{clock:?}")
        };
        assert_eq!(pmu_time(p), (tick, facts));
        assert_eq!(p.skid, 1000);
        assert!(clock.semantics.contains("(emulated counter, software:"));
    }

    #[test]
    fn merge_lists_compare_with_the_probe_names() {
        assert!(same_merges(&merge_names("lfence,rdrand"), "lfence,rdrand"));
        assert!(same_merges(&merge_names(""), ""));
        assert!(!same_merges(&merge_names("lfence"), "lfence,rdrand"));
    }
}
