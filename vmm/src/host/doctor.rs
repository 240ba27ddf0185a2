//! `ttvm doctor`: will ttvm work on this host, and with which clock? Every check says
//! what it found and, when something is missing, what to do.

use std::path::Path;

use serde::Serialize;

use crate::host::kvm::{self as kvm_host, RUN_REQUIREMENTS};
use crate::host::{pmu_selftest, step_probe};
use crate::run::pmu::probe as pmu_probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClockVerdict {
    pub clock: &'static str,
    pub usable: bool,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub kvm_module: String,
    pub hardware_virtualization: bool,
    pub checks: Vec<Check>,
    pub clocks: Vec<ClockVerdict>,
    pub verdict: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// Whether the CPU this runs on advertises VMX or SVM (hardware virtualization).
fn hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// Runs every check against the KVM device at `kvm_path`.
pub fn diagnose(kvm_path: &Path) -> Diagnosis {
    let mut checks = Vec::new();
    let module = kvm_host::kvm_module();
    let hw = hardware_virtualization();
    checks.push(check(
        "kvm module",
        if module == "unknown" {
            Status::Warn
        } else {
            Status::Ok
        },
        format!(
            "{module}; {}",
            if hw {
                "the CPU has hardware virtualization (VMX/SVM)"
            } else {
                "no VMX/SVM on this CPU: a software or nested KVM"
            }
        ),
    ));
    let kvm = match kvm_host::open_kvm(kvm_path, &[]) {
        Ok(kvm) => {
            checks.push(check(
                "kvm device",
                Status::Ok,
                format!("{} opens, API version 12", kvm_path.display()),
            ));
            Some(kvm)
        }
        Err(e) => {
            checks.push(check("kvm device", Status::Fail, e.to_string()));
            None
        }
    };
    let mut singlestep_ok = kvm.is_some();
    if let Some(kvm) = &kvm {
        for r in RUN_REQUIREMENTS {
            let ok = kvm_host::CapabilityQuery::has(kvm, r.cap);
            singlestep_ok &= ok;
            checks.push(check(
                "kvm capability",
                if ok { Status::Ok } else { Status::Fail },
                format!(
                    "{}: {} ({})",
                    r.name,
                    if ok { "present" } else { "MISSING" },
                    r.what_for
                ),
            ));
        }
        match step_probe::probe(kvm) {
            Ok(s) => {
                checks.push(check(
                    "single-step",
                    Status::Ok,
                    if s.rearm_each_step {
                        "works by the guest's trap flag, which KVM's instruction emulator and interrupt delivery drop: ttvm re-arms before every step and delivers interrupts, INT3/INT n and UD2 itself (real hardware-virtualization semantics)"
                    } else {
                        "works and stays armed across emulated instructions (this KVM's own single-step)"
                    },
                ));
                if s.rearm_each_step {
                    checks.push(if s.exception_breakpoints {
                        check(
                            "exception handlers",
                            Status::Ok,
                            "stepped: a hardware breakpoint at the handler's entry stops the faulting instruction's step (#PF, #GP, #UD, #DE)",
                        )
                    } else {
                        check(
                            "exception handlers",
                            Status::Warn,
                            "hardware execution breakpoints do not fire on this KVM, so the handler of an exception an instruction raises (#PF, #GP, #DE...) runs inside that instruction's single step: its instructions are not counted, and a time-stamp read in it is not recorded (replay may diverge); interrupts, INT3 and UD2 are not affected",
                        )
                    });
                }
            }
            Err(e) => {
                singlestep_ok = false;
                checks.push(check("single-step", Status::Fail, e.to_string()));
            }
        }
        match step_probe::probe_cpl3(kvm) {
            Ok(Ok(())) => checks.push(check("single-step at CPL3", Status::Ok, "works (user-mode guest code can be stepped)")),
            Ok(Err(why)) => checks.push(check(
                "single-step at CPL3",
                Status::Warn,
                format!("broken: {why}; the single-step clock stops with an error when a guest enters user mode (a Linux kernel records up to its first user process; ttvm's test guests run at CPL0)"),
            )),
            Err(e) => checks.push(check("single-step at CPL3", Status::Warn, e.to_string())),
        }
        match crate::host::syscall_probe::probe(kvm) {
            Ok(Ok(())) => checks.push(check("user-mode SYSCALL", Status::Ok, "enters the guest kernel at CPL0")),
            Ok(Err(why)) => checks.push(check(
                "user-mode SYSCALL",
                Status::Warn,
                format!("broken: {why}; a stock kernel's user processes cannot make system calls on this KVM (it expects guests written for it), so Linux user space does not work here even free-running; kernel-mode workloads do"),
            )),
            Err(e) => checks.push(check("user-mode SYSCALL", Status::Warn, e.to_string())),
        }
        checks.push(tsc_check(kvm));
    }
    let pmu = pmu_probe::probe();
    let event = pmu.event.as_ref().map_or("no event".to_string(), |e| {
        format!("{} {} (raw {:#x})", e.vendor, e.name, e.config)
    });
    let paranoid = pmu
        .perf_event_paranoid
        .map_or(String::new(), |p| format!("; perf_event_paranoid={p}"));
    checks.push(match &pmu.error {
        None => check(
            "pmu",
            Status::Ok,
            format!("guest-only {event} opens{paranoid}"),
        ),
        Some(e) => check("pmu", Status::Warn, format!("{event}: {e}{paranoid}")),
    });
    let accuracy = pmu_accuracy_check(kvm.as_ref(), &pmu);
    let pmu_ok = singlestep_ok && accuracy.status == Status::Ok;
    checks.push(accuracy);
    let emulated = emulated_convergence_check(kvm.as_ref());
    let emulated_ok = singlestep_ok && emulated.status == Status::Ok;
    checks.push(emulated);
    let clocks = vec![
        ClockVerdict {
            clock: "singlestep",
            usable: singlestep_ok,
            why: if singlestep_ok {
                "exact everywhere KVM single-steps; ~1 KVM exit per guest instruction".to_string()
            } else {
                "KVM is missing or lacks a capability listed above".to_string()
            },
        },
        ClockVerdict {
            clock: "pmu",
            usable: pmu_ok,
            why: match &pmu.error {
                Some(e) => format!("no guest branch counter here ({e})"),
                None if pmu_ok => "the guest runs at native speed between events; guests that \
                                   read the TSC do not replay (see README)"
                    .to_string(),
                None => {
                    "the counter opens but failed its self-test (see \"pmu accuracy\")".to_string()
                }
            },
        },
        ClockVerdict {
            clock: "pmu-emulated",
            usable: emulated_ok,
            why: if emulated_ok {
                "the pmu clock's loop with a software branch counter: as slow as singlestep, \
                 for checking pmu recordings without a PMU"
                    .to_string()
            } else {
                "its convergence check failed (see \"pmu convergence (software counter)\")"
                    .to_string()
            },
        },
    ];
    let verdict = if pmu_ok {
        "ttvm works here: record uses the pmu clock (auto), singlestep also works".to_string()
    } else if singlestep_ok {
        "ttvm works here: record and replay use the singlestep clock".to_string()
    } else {
        "ttvm cannot record here: fix the failed checks above".to_string()
    };
    Diagnosis {
        kvm_module: module,
        hardware_virtualization: hw,
        checks,
        clocks,
        verdict,
    }
}

/// Why a check that needs a scratch VM did not run.
const NO_KVM: &str = "not run: the KVM device does not open (see \"kvm device\")";

/// Whether guest-only branch counting is exact here, and positions are reached again
/// exactly through overflow + single-steps ([`pmu_selftest`]).
fn pmu_accuracy_check(kvm: Option<&kvm_ioctls::Kvm>, pmu: &pmu_probe::PmuProbe) -> Check {
    let (Some(event), None) = (&pmu.event, &pmu.error) else {
        return check("pmu accuracy", Status::Skip, "not measured: no counter");
    };
    let Some(kvm) = kvm else {
        return check("pmu accuracy", Status::Skip, NO_KVM);
    };
    match pmu_selftest::run(kvm, event, 16) {
        Ok(r) if r.count_exact() => check(
            "pmu accuracy",
            Status::Ok,
            format!(
                "a loop guest retired {} conditional branches, counted {}; {} positions reached \
                 again exactly (skid margin {})",
                r.expected_branches, r.counted_branches, r.positions_checked, r.margin
            ),
        ),
        Ok(r) => check(
            "pmu accuracy",
            Status::Fail,
            format!(
                "a loop guest retired {} conditional branches but the counter says {}: this \
                 PMU (or its virtualization) does not count guest branches exactly",
                r.expected_branches, r.counted_branches
            ),
        ),
        Err(e) => check("pmu accuracy", Status::Fail, e.to_string()),
    }
}

/// The pmu clock's convergence (overflow a margin early, then single-steps) on this KVM,
/// with a software branch counter in place of the PMU: it checks that this KVM's stepping
/// lets positions be reached exactly, whatever the PMU.
fn emulated_convergence_check(kvm: Option<&kvm_ioctls::Kvm>) -> Check {
    const NAME: &str = "pmu convergence (software counter)";
    let Some(kvm) = kvm else {
        return check(NAME, Status::Skip, NO_KVM);
    };
    let maker = pmu_selftest::EmulatedMaker {
        max_skid: 20,
        seed: std::cell::Cell::new(0x5eed),
    };
    match pmu_selftest::run_with(kvm, &maker, 8) {
        Ok(r) if r.count_exact() => check(
            NAME,
            Status::Ok,
            format!(
                "{} positions of a loop guest ({} branches) reached exactly with overflows up \
                 to 20 branches late",
                r.positions_checked, r.counted_branches
            ),
        ),
        Ok(r) => check(
            NAME,
            Status::Fail,
            format!(
                "the software counter saw {} branches, expected {}",
                r.counted_branches, r.expected_branches
            ),
        ),
        Err(e) => check(NAME, Status::Fail, e.to_string()),
    }
}

/// TSC control (KVM_SET_TSC_KHZ); ttvm does not need it under the single-step clock.
fn tsc_check(kvm: &kvm_ioctls::Kvm) -> Check {
    let result = (|| -> Result<String, String> {
        let vm = kvm.create_vm().map_err(|e| e.to_string())?;
        let vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
        let khz = vcpu
            .get_tsc_khz()
            .map_err(|e| format!("KVM_GET_TSC_KHZ: {e}"))?;
        vcpu.set_tsc_khz(khz / 2)
            .map_err(|e| format!("KVM_SET_TSC_KHZ to {} kHz: {e}", khz / 2))?;
        Ok(format!(
            "TSC frequency control works (host {khz} kHz, set {} kHz)",
            khz / 2
        ))
    })();
    match result {
        Ok(detail) => check("tsc control", Status::Ok, detail),
        Err(e) => check(
            "tsc control",
            Status::Warn,
            format!("{e}; not needed: ttvm emulates RDTSC under the single-step clock"),
        ),
    }
}
