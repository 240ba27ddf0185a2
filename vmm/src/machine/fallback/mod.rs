//! Executing, in the VMM, the instructions that this KVM's instruction emulator cannot run.
//!
//! KVMs without hardware virtualization underneath (the project's nested kvm_pvm) emulate
//! ring-0 code and fail on instructions their emulator lacks (`int3`, `int n`, `fwait`,
//! `clac`/`stac`, `popcnt`, `cmpxchg16b`, a 32-bit `iret`; see HOST-NOTES). KVM reports
//! such a failure as KVM_EXIT_INTERNAL_ERROR (emulation) with the vCPU still at the
//! instruction; the machine then executes it here, deterministically and from machine state
//! alone (so record and replay need no event for it), and goes on.
//!
//! Everything here is a pure function of the vCPU registers and guest memory (reached
//! through the `LinearMemory` trait), so the unit tests run each instruction against the
//! host CPU's own result. Exceptions an instruction raises (#UD, #GP, #NM, #MF) are
//! delivered through the guest's IDT as the CPU would.

mod delivery;
mod operand;

#[cfg(test)]
mod tests;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic};
use kvm_bindings::{kvm_regs, kvm_sregs};

pub use delivery::deliver;
pub use operand::write_gpr;
use operand::{effective_address, read_gpr};

/// Guest memory by linear address (the guest's page tables applied).
pub trait LinearMemory {
    /// Reads `buf.len()` bytes at `linear`; false if any byte is not mapped RAM.
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `linear`; false (nothing written) if any byte is not mapped RAM.
    fn write(&mut self, linear: u64, data: &[u8]) -> bool;
}

/// The vCPU state an instruction works on.
pub struct Cpu<'a> {
    pub regs: &'a mut kvm_regs,
    pub sregs: &'a mut kvm_sregs,
    /// The x87 status word (FSW), for `fwait`.
    pub fpu_status: u16,
}

/// What an executed instruction changed beyond the general registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executed {
    pub mnemonic: Mnemonic,
    /// Segment or descriptor-table state changed (`int`, `iret`): write the special
    /// registers back too.
    pub sregs_changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    #[error("the bytes at RIP do not decode ({bytes:02x?})")]
    Undecodable { bytes: Vec<u8> },
    #[error("`{mnemonic}` is not executed by ttvm's fallback{hint}")]
    NotSupported {
        mnemonic: String,
        hint: &'static str,
    },
    #[error("`{mnemonic}` touches unmapped guest memory at {linear:#x}")]
    Unmapped { mnemonic: String, linear: u64 },
    #[error("delivering vector {vector}: {reason}")]
    Delivery { vector: u8, reason: String },
}

const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const CR0_MP: u64 = 1 << 1;
const CR0_TS: u64 = 1 << 3;
/// x87 status word: an unmasked exception is pending.
const FSW_ES: u16 = 1 << 7;

const VECTOR_BP: u8 = 3;
const VECTOR_UD: u8 = 6;
const VECTOR_NM: u8 = 7;
const VECTOR_GP: u8 = 13;
const VECTOR_MF: u8 = 16;

/// The CPU mode's default bitness for code: 16, 32 or 64.
pub fn code_bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.efer & (1 << 10) != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// Decodes the instruction in `bytes` (fetched at RIP) for the vCPU's current mode.
pub fn decode(bytes: &[u8], cpu: &Cpu) -> Result<Instruction, FallbackError> {
    let mut decoder = Decoder::with_ip(
        code_bitness(cpu.sregs),
        bytes,
        cpu.regs.rip,
        DecoderOptions::NONE,
    );
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(FallbackError::Undecodable {
            bytes: bytes.to_vec(),
        });
    }
    Ok(instr)
}

/// Executes the instruction in `bytes` (at RIP) on `cpu` and `mem`, as the CPU would.
pub fn execute(
    bytes: &[u8],
    cpu: &mut Cpu,
    mem: &mut dyn LinearMemory,
) -> Result<Executed, FallbackError> {
    let instr = decode(bytes, cpu)?;
    let mnemonic = instr.mnemonic();
    let next_rip = instr.next_ip();
    let cpl = cpu.sregs.cs.dpl;
    let done = |sregs_changed| {
        Ok(Executed {
            mnemonic,
            sregs_changed,
        })
    };
    // An exception raised by the instruction: delivered with RIP at the instruction.
    let fault = |cpu: &mut Cpu, mem: &mut dyn LinearMemory, vector, error| {
        let rip = cpu.regs.rip;
        deliver(cpu, mem, vector, rip, error)?;
        done(true)
    };
    match mnemonic {
        Mnemonic::Int3 => {
            deliver(cpu, mem, VECTOR_BP, next_rip, None)?;
            done(true)
        }
        Mnemonic::Int1 => {
            deliver(cpu, mem, 1, next_rip, None)?;
            done(true)
        }
        Mnemonic::Int => {
            deliver(cpu, mem, instr.immediate8(), next_rip, None)?;
            done(true)
        }
        Mnemonic::Into => {
            if cpu.regs.rflags & RFLAGS_OF != 0 {
                deliver(cpu, mem, 4, next_rip, None)?;
                return done(true);
            }
            cpu.regs.rip = next_rip;
            done(false)
        }
        // The undefined-opcode instructions (Linux's BUG and WARN): #UD at the instruction.
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => fault(cpu, mem, VECTOR_UD, None),
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => {
            delivery::iret(cpu, mem, &instr)?;
            done(true)
        }
        Mnemonic::Wait => {
            if cpu.sregs.cr0 & (CR0_MP | CR0_TS) == (CR0_MP | CR0_TS) {
                return fault(cpu, mem, VECTOR_NM, None);
            }
            if cpu.fpu_status & FSW_ES != 0 {
                return fault(cpu, mem, VECTOR_MF, None);
            }
            cpu.regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Clac | Mnemonic::Stac => {
            if cpl != 0 {
                return fault(cpu, mem, VECTOR_UD, None);
            }
            if mnemonic == Mnemonic::Clac {
                cpu.regs.rflags &= !RFLAGS_AC;
            } else {
                cpu.regs.rflags |= RFLAGS_AC;
            }
            cpu.regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Lfence | Mnemonic::Mfence | Mnemonic::Sfence | Mnemonic::Pause => {
            cpu.regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Nop => {
            cpu.regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Popcnt => {
            let bits = instr.op0_register().size() as u32 * 8;
            let source = match instr.op1_kind() {
                iced_x86::OpKind::Register => read_gpr(cpu.regs, instr.op1_register()),
                _ => {
                    let addr = effective_address(&instr, cpu.regs, cpu.sregs);
                    let mut buf = [0u8; 8];
                    let n = (bits / 8) as usize;
                    if !mem.read(addr, &mut buf[..n]) {
                        return Err(unmapped(mnemonic, addr));
                    }
                    u64::from_le_bytes(buf)
                }
            };
            let source = source & width_mask(bits);
            write_gpr(
                cpu.regs,
                instr.op0_register(),
                u64::from(source.count_ones()),
            );
            cpu.regs.rflags &=
                !(RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF);
            if source == 0 {
                cpu.regs.rflags |= RFLAGS_ZF;
            }
            cpu.regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Cmpxchg16b | Mnemonic::Cmpxchg8b => {
            let wide = instr.code() == Code::Cmpxchg16b_m128;
            let half = if wide { 8 } else { 4 };
            let addr = effective_address(&instr, cpu.regs, cpu.sregs);
            if wide && !addr.is_multiple_of(16) {
                return fault(cpu, mem, VECTOR_GP, Some(0));
            }
            let mut buf = [0u8; 16];
            if !mem.read(addr, &mut buf[..2 * half]) {
                return Err(unmapped(mnemonic, addr));
            }
            let mask = width_mask(half as u32 * 8);
            let low = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) & mask;
            let high = if wide {
                u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default())
            } else {
                (u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) >> 32) & mask
            };
            let regs = &mut *cpu.regs;
            if low == regs.rax & mask && high == regs.rdx & mask {
                let mut out = [0u8; 16];
                out[..half].copy_from_slice(&(regs.rbx & mask).to_le_bytes()[..half]);
                out[half..2 * half].copy_from_slice(&(regs.rcx & mask).to_le_bytes()[..half]);
                if !mem.write(addr, &out[..2 * half]) {
                    return Err(unmapped(mnemonic, addr));
                }
                regs.rflags |= RFLAGS_ZF;
            } else {
                // The CPU writes the old value back (a locked read-modify-write); the
                // memory is unchanged either way.
                // (EDX:EAX destinations are zero-extended, as 32-bit writes are.)
                regs.rflags &= !RFLAGS_ZF;
                regs.rax = low;
                regs.rdx = high;
            }
            regs.rip = next_rip;
            done(false)
        }
        Mnemonic::Xrstor | Mnemonic::Xrstors | Mnemonic::Xsave | Mnemonic::Xsaveopt => {
            Err(FallbackError::NotSupported {
                mnemonic: format!("{mnemonic:?}").to_lowercase(),
                hint: " (boot Linux with `noxsave`)",
            })
        }
        _ => Err(FallbackError::NotSupported {
            mnemonic: format!("{mnemonic:?}").to_lowercase(),
            hint: "",
        }),
    }
}

fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn unmapped(mnemonic: Mnemonic, linear: u64) -> FallbackError {
    FallbackError::Unmapped {
        mnemonic: format!("{mnemonic:?}").to_lowercase(),
        linear,
    }
}
