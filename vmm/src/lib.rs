//! `ttvm-vmm`: the machine that ttvm records, replays and debugs.
//!
//! One KVM VM with one vCPU and no in-kernel irqchip, PIT or LAPIC: every interrupt is
//! injected by this crate, which is what makes recording possible. Guests boot by the PVH
//! protocol. Devices are deterministic state machines on a port-I/O bus; everything they
//! take from the host crosses one trait, [`inputs::HostInputs`].

pub mod boot;
pub mod cpuid;
pub mod decode;
pub mod devices;
pub mod digest;
pub mod doctor;
pub mod elf_image;
pub mod end;
pub mod fallback;
pub mod host_kvm;
pub mod inputs;
pub mod kick;
pub mod kvm_host;
pub mod live;
pub mod machine;
pub mod memory;
pub mod merge_probe;
pub mod pages;
pub mod paging;
pub mod pmu;
pub mod run_loop;
pub mod snapshot;
pub mod step_probe;
pub mod stepping;
pub mod syscall_probe;
mod unemulated;
pub mod vcpu;
pub mod vcpu_state;

pub use end::{exit_code, RunEnd};
pub use inputs::{HostInputs, RealHost, SerialPoll, SerialSource};
pub use machine::{Initrd, Machine, MachineConfig, MachineError, RunStats};
pub use run_loop::RunReport;
