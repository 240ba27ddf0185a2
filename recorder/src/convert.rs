//! Between the machine's types and the trace's.

use std::collections::BTreeMap;

use ttvm_logs::{ClockInfo, CpuidEntry as TraceCpuid, EndReason};
use ttvm_vmm::cpuid::CpuidEntry;
use ttvm_vmm::step_probe::StepSemantics;
use ttvm_vmm::stepping::{BootFacts, TimeConfig};
use ttvm_vmm::RunEnd;

/// Name of the single-step clock in trace headers.
pub const SINGLESTEP_CLOCK: &str = "singlestep";
pub const PARAM_NS_PER_STEP: &str = "ns_per_step";
pub const PARAM_TSC_BASE: &str = "tsc_base";
pub const PARAM_WALL_CLOCK: &str = "boot_wall_clock_ns";
pub const PARAM_KVM_MODULE: &str = "kvm_module";
pub const PARAM_STEP_REARM: &str = "step_rearm";

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
        PARAM_STEP_REARM.to_string(),
        semantics.rearm_each_step.to_string(),
    );
    params.insert(PARAM_NS_PER_STEP.to_string(), time.ns_per_step.to_string());
    params.insert(PARAM_TSC_BASE.to_string(), facts.tsc_base.to_string());
    params.insert(
        PARAM_WALL_CLOCK.to_string(),
        facts.wall_clock_ns.to_string(),
    );
    params.insert(PARAM_KVM_MODULE.to_string(), kvm_module.to_string());
    ClockInfo {
        name: SINGLESTEP_CLOCK.to_string(),
        semantics: format!(
            "positions count KVM_GUESTDBG_SINGLESTEP steps since boot on {kvm_module} (one more \
             per VMM-emulated RDTSC/RDTSCP/RDRAND/RDSEED/RDMSR-TSC/HLT); guest ns = steps * \
             {} + time skipped while halted; TSC = tsc_base + guest ns",
            time.ns_per_step
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

pub fn machine_cpuid(table: &[TraceCpuid]) -> Vec<CpuidEntry> {
    table
        .iter()
        .map(|e| CpuidEntry {
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
