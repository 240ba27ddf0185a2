//! The trace's description of a machine and of how its run ended.

use ttvm_logs::{
    ClockInfo, CpuidEntry as TraceCpuid, EndReason, HostInfo, MachineConfig as TraceMachine,
    TraceHeader, TraceMeta,
};
use ttvm_vmm::machine::cpuid::CpuidEntry;
use ttvm_vmm::{Initrd, Machine, MachineConfig, RunEnd};

/// The trace's end reason for a run that ended with `end`.
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

/// The machine's CPUID template as the trace records it.
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

/// A recorded CPUID template as the machine takes it.
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

/// The trace header's description of a recording of `machine` with `clock`.
pub fn trace_meta(
    guest_name: &str,
    image_name: &str,
    machine: &Machine,
    clock: ClockInfo,
) -> TraceMeta {
    let config = machine.config();
    TraceMeta {
        guest_name: guest_name.to_string(),
        ttvm_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: TraceMachine {
            mem_bytes: config.mem_bytes,
            cmdline: config.cmdline.clone(),
            cpuid: trace_cpuid(machine.cpuid()),
        },
        clock,
        host: HostInfo::detect(),
        guest_image_name: image_name.to_string(),
    }
}

/// The configuration of the machine `header`'s trace was recorded on (memory, command
/// line, CPUID), booted with `initrd` (the trace's embedded one).
pub fn machine_config(header: &TraceHeader, initrd: Option<Initrd>) -> MachineConfig {
    MachineConfig {
        mem_bytes: header.machine.mem_bytes,
        cmdline: header.machine.cmdline.clone(),
        cpuid: Some(machine_cpuid(&header.machine.cpuid)),
        initrd,
        ..MachineConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_round_trips() {
        let table = vec![CpuidEntry {
            function: 7,
            index: 1,
            flags: 1,
            eax: 2,
            ebx: 3,
            ecx: 4,
            edx: 5,
        }];
        assert_eq!(machine_cpuid(&trace_cpuid(&table)), table);
    }

    #[test]
    fn every_end_has_a_trace_reason() {
        let ends = [
            (RunEnd::GuestExit { status: 3 }, "guest exit (status 3)"),
            (RunEnd::TripleFault { rip: 16 }, "triple fault at rip 0x10"),
            (RunEnd::Reset { rip: 1 }, "reset"),
        ];
        for (end, text) in ends {
            assert_eq!(end_reason(&end).to_string(), text);
        }
    }
}
