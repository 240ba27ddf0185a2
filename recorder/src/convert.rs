//! Between the machine's types and the trace's.

use std::collections::BTreeMap;

use ttvm_logs::clock_params::{
    KVM_MODULE, NS_PER_STEP, NS_PER_TICK, PMU_CLOCK, PMU_COUNTER, PMU_COUNTER_EMULATED,
    PMU_COUNTER_HARDWARE, PMU_EVENT, PMU_SKID, PMU_VENDOR, SINGLESTEP_CLOCK, STEP_MERGES,
    STEP_REARM, TSC_BASE, WALL_CLOCK,
};
use ttvm_logs::{ClockInfo, CpuidEntry as TraceCpuid, EndReason};
use ttvm_vmm::host::step_probe::StepSemantics;
use ttvm_vmm::machine::cpuid::CpuidEntry;
use ttvm_vmm::run::pmu::probe::BranchEvent;
use ttvm_vmm::run::pmu::ticked::TickTime;
use ttvm_vmm::run::singlestep::{BootFacts, TimeConfig};
use ttvm_vmm::RunEnd;

pub fn end_reason(end: &RunEnd) -> EndReason {
    match end {
        RunEnd::GuestExit { status } => EndReason::GuestExit { status: *status },
        RunEnd::TripleFault { rip } => EndReason::TripleFault { rip: *rip },
        RunEnd::HaltedForGood { rip, .. } => EndReason::HaltedForGood { rip: *rip },
        RunEnd::Reset { .. } => EndReason::Reset,
        RunEnd::EmulationError { rip, detail, .. } => EndReason::EmulationError {
            rip: *rip,
            detail: detail.clone(),
        },
    }
}

/// The clock description recorded in the header: everything replay needs to reproduce
/// guest time, and what the positions mean.
pub fn singlestep_clock(
    time: TimeConfig,
    facts: BootFacts,
    kvm_module: &str,
    semantics: StepSemantics,
) -> ClockInfo {
    let mut params = BTreeMap::new();
    params.insert(
        STEP_REARM.to_string(),
        semantics.rearm_each_step.to_string(),
    );
    params.insert(STEP_MERGES.to_string(), semantics.merges.names());
    params.insert(NS_PER_STEP.to_string(), time.ns_per_step.to_string());
    params.insert(TSC_BASE.to_string(), facts.tsc_base.to_string());
    params.insert(WALL_CLOCK.to_string(), facts.wall_clock_ns.to_string());
    params.insert(KVM_MODULE.to_string(), kvm_module.to_string());
    ClockInfo {
        name: SINGLESTEP_CLOCK.to_string(),
        semantics: format!(
            "positions count KVM_GUESTDBG_SINGLESTEP steps since boot on {kvm_module} (one more \
             per VMM-emulated RDTSC/RDTSCP/RDRAND/RDSEED/RDMSR-TSC/HLT, per instruction KVM \
             could not emulate, and per instruction in step_merges); guest ns = steps * \
             {} + time skipped while halted; TSC = tsc_base + guest ns",
            time.ns_per_step
        ),
        params,
    }
}

/// Which branch counter a pmu-clock trace was recorded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmuCounterInfo {
    pub counter: &'static str,
    pub vendor: String,
    pub event: String,
    pub margin: u64,
}

impl PmuCounterInfo {
    pub fn hardware(event: &BranchEvent, margin: u64) -> Self {
        PmuCounterInfo {
            counter: PMU_COUNTER_HARDWARE,
            vendor: event.vendor.clone(),
            event: format!("{:#x}", event.config),
            margin,
        }
    }

    pub fn emulated(margin: u64) -> Self {
        PmuCounterInfo {
            counter: PMU_COUNTER_EMULATED,
            vendor: "ttvm".to_string(),
            event: "software: conditional branches decoded by iced-x86".to_string(),
            margin,
        }
    }
}

/// The pmu clock's description in the header.
pub fn pmu_clock(
    time: TickTime,
    facts: BootFacts,
    kvm_module: &str,
    counter: &PmuCounterInfo,
) -> ClockInfo {
    let mut params = BTreeMap::new();
    params.insert(PMU_COUNTER.to_string(), counter.counter.to_string());
    params.insert(PMU_VENDOR.to_string(), counter.vendor.clone());
    params.insert(PMU_EVENT.to_string(), counter.event.clone());
    params.insert(PMU_SKID.to_string(), counter.margin.to_string());
    params.insert(NS_PER_TICK.to_string(), time.ns_per_tick.to_string());
    params.insert(TSC_BASE.to_string(), facts.tsc_base.to_string());
    params.insert(WALL_CLOCK.to_string(), facts.wall_clock_ns.to_string());
    params.insert(KVM_MODULE.to_string(), kvm_module.to_string());
    ClockInfo {
        name: PMU_CLOCK.to_string(),
        semantics: format!(
            "positions count retired conditional branches in guest mode ({} counter, {} on \
             {}), made exact by RIP and RCX at each logged stop; guest ns = ticks * {} + time \
             skipped while halted; the guest reads the host's TSC (not recorded) and sees no \
             RDRAND/RDSEED",
            counter.counter, counter.event, counter.vendor, time.ns_per_tick
        ),
        params,
    }
}

pub fn trace_cpuid(table: &[CpuidEntry]) -> Vec<TraceCpuid> {
    table
        .iter()
        .map(|e| TraceCpuid {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}
