//! What this host's KVM can do: opening it and checking its capabilities, probes of how it
//! single-steps (re-arming, merged instructions, user mode, SYSCALL), the pmu clock's
//! self-test, and `ttvm doctor`, which reports all of them.

pub mod doctor;
pub mod kvm;
pub mod merge_probe;
pub mod pmu_selftest;
pub mod step_probe;
pub mod syscall_probe;
