//! Probing which instructions this KVM executes together with the next one in a single
//! step. On the project's nested KVM, `lfence; rdtsc` is ONE single step (like `rdrand`
//! and the instruction after it): the `rdtsc` ran unseen and read the host's TSC. Which
//! instructions do this is a property of the KVM's emulator, so it is probed in a scratch
//! VM, never assumed: each candidate is placed before a `nop` and stepped once.
//!
//! The stepping loop then executes a merging instruction in the VMM (`crate::machine::fallback`)
//! instead of stepping it, so the instruction after it is always seen on its own step.

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::host::step_probe::{ProbeError, ScratchVm};
use crate::machine::vcpu::Exit;

/// The candidates, each an instruction that runs in real mode with no memory operand.
/// `bit` is its place in [`StepMerges`].
const CANDIDATES: &[(&str, &[u8])] = &[
    ("lfence", &[0x0f, 0xae, 0xe8]),
    ("mfence", &[0x0f, 0xae, 0xf0]),
    ("sfence", &[0x0f, 0xae, 0xf8]),
    ("pause", &[0xf3, 0x90]),
    ("nop", &[0x90]),
    ("cpuid", &[0x0f, 0xa2]),
    ("wbinvd", &[0x0f, 0x09]),
    ("rdrand", &[0x0f, 0xc7, 0xf0]),
    ("xchg", &[0x87, 0xdb]),
];

/// Where each candidate's little program starts in the scratch VM (real mode).
const PROGRAMS: u64 = 0x1000;
const SLOT: u64 = 0x20;

/// The instructions this KVM runs together with the next one in one single step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMerges(u32);

impl StepMerges {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the instruction named `name` (a candidate's mnemonic) merges.
    pub fn contains(self, name: &str) -> bool {
        CANDIDATES
            .iter()
            .position(|(n, _)| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The merging instructions' names, comma-separated ("" if none), as in trace headers.
    pub fn names(self) -> String {
        CANDIDATES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses `names` (as written by [`StepMerges::names`]); None if a name is unknown.
    pub fn parse(names: &str) -> Option<Self> {
        let mut bits = 0;
        for name in names.split(',').filter(|n| !n.is_empty()) {
            bits |= 1 << CANDIDATES.iter().position(|(n, _)| *n == name)?;
        }
        Some(StepMerges(bits))
    }
}

/// Steps each candidate once in a scratch VM (~a millisecond in all).
pub fn probe(kvm: &Kvm) -> Result<StepMerges, ProbeError> {
    let mut scratch = ScratchVm::new(kvm, &[0xf4])?;
    let mut merges = 0;
    for (i, (name, bytes)) in CANDIDATES.iter().enumerate() {
        let start = PROGRAMS + i as u64 * SLOT;
        // candidate; nop; nop; hlt
        let mut program = bytes.to_vec();
        program.extend([0x90, 0x90, 0xf4]);
        scratch
            .mem
            .write_slice(&program, GuestAddress(start))
            .map_err(|e| ProbeError::Memory(e.to_string()))?;
        let vcpu = &mut scratch.vcpu;
        let mut regs = vcpu.regs()?;
        regs.rip = start;
        regs.rax = 0;
        regs.rflags = 0x2;
        vcpu.set_regs(&regs)?;
        // Registers first, then arm (real KVM keeps the trap only for the armed RIP).
        vcpu.set_single_step(true)?;
        let after = loop {
            match vcpu.run()? {
                Exit::Debug { .. } => break vcpu.regs()?.rip,
                Exit::Interrupted => {}
                // Stepping over the whole program (a KVM that ignores the trap here).
                Exit::Hlt => break vcpu.regs()?.rip,
                // This KVM cannot run the candidate at all (e.g. `pause` on kvm_pvm): the
                // fallback executes it when a guest meets it, so it never merges.
                Exit::InternalError { .. } => break start,
                other => return Err(ProbeError::Unexpected(other)),
            }
        };
        let alone = start + bytes.len() as u64;
        if after != alone {
            tracing::debug!(
                name,
                after = format_args!("{after:#x}"),
                "merges with the next instruction"
            );
            merges |= 1 << i;
        }
    }
    let merges = StepMerges(merges);
    tracing::debug!(merges = merges.names(), "step-merge probe");
    Ok(merges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let m = StepMerges(0b101);
        assert_eq!(m.names(), "lfence,sfence");
        assert_eq!(StepMerges::parse("lfence,sfence"), Some(m));
        assert_eq!(StepMerges::parse(""), Some(StepMerges::default()));
        assert_eq!(StepMerges::parse("lfence,bogus"), None);
        assert!(m.contains("sfence") && !m.contains("mfence"));
    }
}
