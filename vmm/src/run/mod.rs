//! Running the machine: free under KVM ([`free`], `--clock none`), under the single-step
//! clock ([`singlestep`]) or the performance-counter clock ([`pmu`]); the live driver that
//! answers the stepped loop from the real host ([`live`]); getting the vCPU out of KVM_RUN
//! ([`kick`]); the host-inputs boundary ([`inputs`]); and how a run ends ([`end`]).

pub mod end;
pub mod free;
pub mod inputs;
pub mod kick;
pub mod live;
pub mod pmu;
pub mod singlestep;
