//! `ttvm-vmm`: the machine that ttvm records, replays and debugs.
//!
//! One KVM VM with one vCPU and no in-kernel irqchip, PIT or LAPIC: every interrupt is
//! injected by this crate, which is what makes recording possible. Guests boot by the PVH
//! protocol. Devices are deterministic state machines on a port-I/O bus; everything they
//! take from the host crosses one trait, [`run::inputs::HostInputs`].
//!
//! - [`machine`]: the machine itself: vCPU, memory, boot, devices, CPUID, instruction
//!   decoding and the VMM's own execution of what KVM cannot emulate, state save/restore;
//! - [`run`]: running it: free under KVM, under the single-step clock or the pmu clock, the
//!   live driver, kicks out of KVM_RUN, the host-inputs boundary, how a run ends;
//! - [`host`]: what this host's KVM can do: opening it, probes of its single-step
//!   behaviour, the pmu self-test, `ttvm doctor`.

pub mod host;
pub mod machine;
pub mod run;

pub use machine::{Initrd, Machine, MachineConfig, MachineError, RunStats};
pub use run::end::{exit_code, RunEnd};
pub use run::free::RunReport;
pub use run::inputs::{HostInputs, RealHost, SerialPoll, SerialSource};
