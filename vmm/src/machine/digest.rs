//! Register snapshots and digests: cheap fingerprints of the vCPU that replay compares
//! with the recording to catch a divergence early, and a readable diff when it happens.

use kvm_bindings::kvm_regs;
use serde::{Deserialize, Serialize};

/// Names of the registers in a snapshot, in order.
pub const REG_NAMES: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];

/// The general registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegSnapshot(pub [u64; 18]);

impl RegSnapshot {
    pub fn from_regs(r: &kvm_regs) -> Self {
        RegSnapshot([
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ])
    }

    pub fn rip(&self) -> u64 {
        self.0[16]
    }

    /// FNV-1a over the registers and the position.
    pub fn digest(&self, position: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for word in self.0.iter().chain(std::iter::once(&position)) {
            for byte in word.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// "rax: expected 0x1 actual 0x2" lines for every register that differs.
    pub fn diff(&self, actual: &RegSnapshot) -> Vec<String> {
        REG_NAMES
            .iter()
            .zip(self.0.iter().zip(actual.0.iter()))
            .filter(|(_, (e, a))| e != a)
            .map(|(name, (e, a))| format!("{name}: expected {e:#x}, actual {a:#x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_registers_and_position() {
        let a = RegSnapshot([1; 18]);
        let mut b = a;
        b.0[3] = 2;
        assert_ne!(a.digest(5), b.digest(5));
        assert_ne!(a.digest(5), a.digest(6));
        assert_eq!(
            a.diff(&b),
            vec!["rdx: expected 0x1, actual 0x2".to_string()]
        );
    }
}
