//! Looking at the next guest instruction before it runs: the ones that must not run
//! natively under record/replay (they read host state KVM does not let us intercept) are
//! emulated by the VMM.

use iced_x86::{Code, Decoder, DecoderOptions, Register};

/// An instruction the VMM emulates instead of stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulated {
    Rdtsc,
    Rdtscp,
    /// RDRAND into `dest` (a general register), `bits` wide.
    Rdrand {
        dest: Register,
        bits: u32,
    },
    Rdseed {
        dest: Register,
        bits: u32,
    },
    /// RDMSR of IA32_TIME_STAMP_COUNTER (the TSC read another way).
    RdmsrTsc,
    Hlt,
}

/// The decoded next instruction: its length and whether the VMM must emulate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextInstruction {
    pub len: u8,
    pub emulated: Option<Emulated>,
}

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;

/// Decodes the instruction in `bytes` for a CPU in `bitness`-bit mode (16, 32, 64). `ecx`
/// is the current ECX (to recognise RDMSR of the TSC). None if the bytes do not decode.
pub fn classify(bytes: &[u8], bitness: u32, ecx: u32) -> Option<NextInstruction> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return None;
    }
    let reg_op = |bits| (instr.op0_register(), bits);
    let emulated = match instr.code() {
        Code::Rdtsc => Some(Emulated::Rdtsc),
        Code::Rdtscp => Some(Emulated::Rdtscp),
        Code::Hlt => Some(Emulated::Hlt),
        Code::Rdmsr if ecx == MSR_TSC => Some(Emulated::RdmsrTsc),
        Code::Rdrand_r16 | Code::Rdrand_r32 | Code::Rdrand_r64 => {
            let (dest, bits) = reg_op(reg_bits(instr.op0_register()));
            Some(Emulated::Rdrand { dest, bits })
        }
        Code::Rdseed_r16 | Code::Rdseed_r32 | Code::Rdseed_r64 => {
            let (dest, bits) = reg_op(reg_bits(instr.op0_register()));
            Some(Emulated::Rdseed { dest, bits })
        }
        _ => None,
    };
    Some(NextInstruction {
        len: instr.len() as u8,
        emulated,
    })
}

fn reg_bits(r: Register) -> u32 {
    if r.is_gpr64() {
        64
    } else if r.is_gpr32() {
        32
    } else {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_what_must_be_emulated() {
        let c = |b: &[u8]| classify(b, 64, 0).unwrap();
        assert_eq!(c(&[0x0f, 0x31]).emulated, Some(Emulated::Rdtsc));
        assert_eq!(c(&[0x0f, 0x01, 0xf9]).emulated, Some(Emulated::Rdtscp));
        assert_eq!(c(&[0xf4]).emulated, Some(Emulated::Hlt));
        assert_eq!(
            c(&[0x48, 0x0f, 0xc7, 0xf0]).emulated,
            Some(Emulated::Rdrand {
                dest: Register::RAX,
                bits: 64
            })
        );
        assert_eq!(
            c(&[0x0f, 0xc7, 0xfb]).emulated,
            Some(Emulated::Rdseed {
                dest: Register::EBX,
                bits: 32
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
    }
}
