//! `ttvm-boundary`: where the machine's types (`ttvm-vmm`) meet the trace's (`ttvm-logs`).
//!
//! `vmm` knows nothing of traces and `logs` nothing of KVM, so what crosses between them
//! is converted here, once, for both drivers: the recorder builds a trace's header from a
//! machine and a clock ([`meta`], [`clock`]) and turns how a run ended into the trace's end
//! reason ([`end_reason`]); the replayer builds the machine a trace was recorded on
//! ([`machine_config`]) and the clock settings it ran with ([`clock`]). The typed clock
//! parameters themselves are part of the trace format (`ttvm_logs::clock`).

pub mod clock;
pub mod meta;

pub use meta::{end_reason, machine_config, machine_cpuid, trace_cpuid, trace_meta};
