//! Between the machine's types and the trace's.

use std::collections::BTreeMap;

use ttvm_logs::clock_params::{
    KVM_MODULE, NS_PER_STEP, SINGLESTEP_CLOCK, STEP_REARM, TSC_BASE, WALL_CLOCK,
};
use ttvm_logs::{ClockInfo, CpuidEntry as TraceCpuid, EndReason};
use ttvm_vmm::cpuid::CpuidEntry;
use ttvm_vmm::step_probe::StepSemantics;
use ttvm_vmm::stepping::{BootFacts, TimeConfig};
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
    params.insert(NS_PER_STEP.to_string(), time.ns_per_step.to_string());
    params.insert(TSC_BASE.to_string(), facts.tsc_base.to_string());
    params.insert(WALL_CLOCK.to_string(), facts.wall_clock_ns.to_string());
    params.insert(KVM_MODULE.to_string(), kvm_module.to_string());
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
