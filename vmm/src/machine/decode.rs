//! Looking at the next guest instruction before it runs: the ones that must not run
//! natively under record/replay (they read host state KVM does not let us intercept) are
//! emulated by the VMM.

use iced_x86::{Code, Decoder, DecoderOptions, Register};

/// An instruction the VMM emulates instead of stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulated {
    Rdtsc,
    Rdtscp,
    /// RDRAND into `dest`, a sized general register (EBX is 32 bits wide, BX 16).
    Rdrand {
        dest: Register,
    },
    Rdseed {
        dest: Register,
    },
    /// RDMSR of IA32_TIME_STAMP_COUNTER (the TSC read another way).
    RdmsrTsc,
    Hlt,
    /// An instruction with no effect but on RIP (a fence, `pause`, `nop`) that this KVM
    /// runs together with the next instruction in one single step (`crate::host::merge_probe`):
    /// the VMM passes over it so that the next instruction is seen on its own step.
    NoEffect,
    /// STI, emulated only when the instruction after it must be emulated: real CPUs
    /// deliver no single-step trap inside STI's interrupt shadow, so `sti; hlt` would
    /// otherwise run as one step with the HLT executed natively.
    Sti,
    /// An instruction that raises an interrupt or exception ([`raises_interrupt`]: INT3,
    /// INT n, UD2...) on a KVM that single-steps with the guest's trap flag: the gate
    /// clears it, so the handler would run unseen inside one step. The VMM executes it
    /// (`crate::machine::fallback` delivers through the guest's IDT), and the handler is
    /// then stepped like any code.
    RaisesInterrupt,
}

/// The candidate of `crate::host::merge_probe` that `bytes` start with (its name, its length, and
/// whether it has no effect but on RIP), found by its encoding after prefixes. None for
/// anything else, which is almost every instruction: this runs before every step.
pub fn merge_candidate(bytes: &[u8], bitness: u32) -> Option<(&'static str, u8, bool)> {
    let mut i = 0;
    let mut rep = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 | 0x67 | 0xf2 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => i += 1,
            0xf3 => {
                rep = true;
                i += 1
            }
            0x40..=0x4f if bitness == 64 => i += 1,
            _ => break,
        }
    }
    let len = |n: usize| (i + n) as u8;
    match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(0x0f), Some(0xae), Some(0xe8)) => Some(("lfence", len(3), true)),
        (Some(0x0f), Some(0xae), Some(0xf0)) => Some(("mfence", len(3), true)),
        (Some(0x0f), Some(0xae), Some(0xf8)) => Some(("sfence", len(3), true)),
        (Some(0x90), _, _) if rep => Some(("pause", len(1), true)),
        (Some(0x90), _, _) if i == 0 => Some(("nop", len(1), true)),
        (Some(0x0f), Some(0xa2), _) => Some(("cpuid", len(2), false)),
        (Some(0x0f), Some(0x09), _) => Some(("wbinvd", len(2), false)),
        (Some(0x87), Some(&modrm), _) if modrm >> 6 == 3 => Some(("xchg", len(2), false)),
        _ => None,
    }
}

/// An instruction that may return from the kernel to user mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelReturn {
    /// SYSRET or SYSEXIT: always to CPL 3.
    Always,
    /// IRET with `size`-byte stack slots: to the privilege level of the CS it pops (the
    /// slot after the return address).
    Iret { size: u8 },
}

/// Whether `bytes` start with IRET, SYSRET or SYSEXIT (after prefixes).
pub fn kernel_return(bytes: &[u8], bitness: u32) -> Option<KernelReturn> {
    let mut i = 0;
    let mut wide = false;
    let mut operand16 = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 => operand16 = true,
            0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            0x40..=0x4f if bitness == 64 => wide = b & 8 != 0,
            _ => break,
        }
        i += 1;
    }
    match (bytes.get(i), bytes.get(i + 1)) {
        (Some(0xcf), _) => Some(KernelReturn::Iret {
            size: match (wide, operand16, bitness) {
                (true, _, _) => 8,
                (false, true, _) => 2,
                (false, false, 16) => 2,
                _ => 4,
            },
        }),
        (Some(0x0f), Some(0x07 | 0x35)) => Some(KernelReturn::Always),
        _ => None,
    }
}

/// Whether `bytes` start with an instruction that always raises an interrupt or exception:
/// INT3, INT imm8, INT1 (ICEBP), INTO outside 64-bit mode (it raises #OF only if OF is
/// set), or UD0/UD1/UD2 (#UD; Linux's BUG and WARN). After legacy prefixes.
pub fn raises_interrupt(bytes: &[u8], bitness: u32) -> bool {
    let at = bytes.iter().position(|&b| {
        !matches!(
            b,
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65
        )
    });
    let Some(at) = at else {
        return false;
    };
    match (bytes[at], bytes.get(at + 1)) {
        (0xcc | 0xcd | 0xf1, _) => true,
        (0xce, _) => bitness != 64,
        (0x0f, Some(0x0b | 0xb9 | 0xff)) => true,
        _ => false,
    }
}

/// Whether `bytes` start with STI (after legacy prefixes).
pub fn is_sti(bytes: &[u8]) -> bool {
    let opcode = bytes.iter().find(|&&b| {
        !matches!(
            b,
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65
        )
    });
    opcode == Some(&0xfb)
}

/// The decoded next instruction: its length and whether the VMM must emulate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextInstruction {
    pub len: u8,
    pub emulated: Option<Emulated>,
}

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;

/// Whether the instruction in `bytes` may be one the VMM emulates: legacy and REX prefixes
/// skipped, the opcode is HLT (F4) or one of 0F 31 (RDTSC), 0F 01 F9 (RDTSCP), 0F 32
/// (RDMSR), 0F C7 /6 /7 with a register operand (RDRAND, RDSEED). Exact for those
/// encodings; everything else is certainly not emulated, which spares a full decode on
/// almost every step.
pub fn may_be_emulated(bytes: &[u8], bitness: u32) -> bool {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 | 0x67 | 0xf2 | 0xf3 | 0xf0 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => i += 1,
            0x40..=0x4f if bitness == 64 => i += 1,
            _ => break,
        }
    }
    match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(0xf4), _, _) => true,
        (Some(0x0f), Some(0x31 | 0x32), _) => true,
        (Some(0x0f), Some(0x01), Some(0xf9)) => true,
        (Some(0x0f), Some(0xc7), Some(&modrm)) => {
            modrm >> 6 == 3 && matches!((modrm >> 3) & 7, 6 | 7)
        }
        _ => false,
    }
}

/// Decodes the instruction in `bytes` for a CPU in `bitness`-bit mode (16, 32, 64). `ecx`
/// is the current ECX (to recognise RDMSR of the TSC). None if the bytes do not decode.
pub fn classify(bytes: &[u8], bitness: u32, ecx: u32) -> Option<NextInstruction> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return None;
    }
    let emulated = match instr.code() {
        Code::Rdtsc => Some(Emulated::Rdtsc),
        Code::Rdtscp => Some(Emulated::Rdtscp),
        Code::Hlt => Some(Emulated::Hlt),
        Code::Rdmsr if ecx == MSR_TSC => Some(Emulated::RdmsrTsc),
        Code::Rdrand_r16 | Code::Rdrand_r32 | Code::Rdrand_r64 => Some(Emulated::Rdrand {
            dest: instr.op0_register(),
        }),
        Code::Rdseed_r16 | Code::Rdseed_r32 | Code::Rdseed_r64 => Some(Emulated::Rdseed {
            dest: instr.op0_register(),
        }),
        _ => None,
    };
    Some(NextInstruction {
        len: instr.len() as u8,
        emulated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_that_raise_interrupts_are_recognised() {
        assert!(raises_interrupt(&[0xcc], 64));
        assert!(raises_interrupt(&[0xcd, 0x80], 32));
        assert!(raises_interrupt(&[0xf1], 64));
        assert!(raises_interrupt(&[0xce], 32));
        assert!(
            !raises_interrupt(&[0xce], 64),
            "INTO is invalid in 64-bit mode"
        );
        assert!(raises_interrupt(&[0x0f, 0x0b], 64));
        assert!(raises_interrupt(&[0x0f, 0xb9, 0x00], 64));
        assert!(!raises_interrupt(&[0xc7, 0x45, 0xcc, 0, 0, 0, 0], 64));
        assert!(!raises_interrupt(&[0x0f, 0x31], 64));
        assert!(!raises_interrupt(&[], 64));
    }

    #[test]
    fn prefilter_agrees_with_the_decoder() {
        let samples: &[&[u8]] = &[
            &[0x0f, 0x31],
            &[0x0f, 0x01, 0xf9],
            &[0xf4],
            &[0x48, 0x0f, 0xc7, 0xf0],
            &[0x66, 0x0f, 0xc7, 0xf8],
            &[0x0f, 0x32],
            &[0x0f, 0xc7, 0x08], // cmpxchg8b [rax]: memory form, not RDRAND
            &[0x0f, 0xb6, 0xc0], // movzx
            &[0x90],
            &[0xf3, 0xa4], // rep movsb
            &[0x48, 0x89, 0xe5],
            &[0xc7, 0x45, 0xf4, 0x01, 0x00, 0x00, 0x00], // mov dword [rbp-12], 1: F4 is a displacement
        ];
        for bytes in samples {
            let decoded = classify(bytes, 64, MSR_TSC)
                .and_then(|n| n.emulated)
                .is_some();
            if decoded {
                assert!(may_be_emulated(bytes, 64), "{bytes:x?}");
            }
            if !may_be_emulated(bytes, 64) {
                assert!(!decoded, "{bytes:x?}");
            }
        }
        assert!(!may_be_emulated(&[0x0f, 0xb6, 0xc0], 64));
        assert!(!may_be_emulated(&[0xc7, 0x45, 0xf4, 0x01, 0, 0, 0], 64));
    }

    #[test]
    fn recognises_what_must_be_emulated() {
        let c = |b: &[u8]| classify(b, 64, 0).unwrap();
        assert_eq!(c(&[0x0f, 0x31]).emulated, Some(Emulated::Rdtsc));
        assert_eq!(c(&[0x0f, 0x01, 0xf9]).emulated, Some(Emulated::Rdtscp));
        assert_eq!(c(&[0xf4]).emulated, Some(Emulated::Hlt));
        assert_eq!(
            c(&[0x48, 0x0f, 0xc7, 0xf0]).emulated,
            Some(Emulated::Rdrand {
                dest: Register::RAX
            })
        );
        assert_eq!(
            c(&[0x0f, 0xc7, 0xfb]).emulated,
            Some(Emulated::Rdseed {
                dest: Register::EBX
            })
        );
        assert_eq!(
            classify(&[0x0f, 0x32], 64, MSR_TSC).unwrap().emulated,
            Some(Emulated::RdmsrTsc)
        );
        assert_eq!(classify(&[0x0f, 0x32], 64, 0x1b).unwrap().emulated, None);
        let nop = c(&[0x90, 0xcc]);
        assert_eq!((nop.len, nop.emulated), (1, None));
        assert!(classify(&[0x0f], 64, 0).is_none());
        assert!(is_sti(&[0xfb, 0xf4]));
        assert_eq!(
            kernel_return(&[0x48, 0xcf], 64),
            Some(KernelReturn::Iret { size: 8 })
        );
        assert_eq!(
            kernel_return(&[0xcf], 32),
            Some(KernelReturn::Iret { size: 4 })
        );
        assert_eq!(
            kernel_return(&[0x48, 0x0f, 0x07], 64),
            Some(KernelReturn::Always)
        );
        assert_eq!(kernel_return(&[0x0f, 0x35], 32), Some(KernelReturn::Always));
        assert_eq!(kernel_return(&[0xc3], 64), None);
        assert!(!is_sti(&[0xfa]));
    }
}
