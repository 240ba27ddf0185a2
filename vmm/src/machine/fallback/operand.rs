//! General registers and memory operands of a decoded instruction.

use iced_x86::{Instruction, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

fn slot(regs: &mut kvm_regs, full: Register) -> Option<&mut u64> {
    Some(match full {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        Register::RIP => &mut regs.rip,
        _ => return None,
    })
}

/// The value of a general register (any width; AH..BH are bits 8-15).
pub fn read_gpr(regs: &kvm_regs, reg: Register) -> u64 {
    let mut copy = *regs;
    let full = slot(&mut copy, reg.full_register()).map_or(0, |v| *v);
    let high_byte = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    match (reg.size(), high_byte) {
        (1, true) => (full >> 8) & 0xff,
        (1, false) => full & 0xff,
        (2, _) => full & 0xffff,
        (4, _) => full & 0xffff_ffff,
        _ => full,
    }
}

/// Writes a general register as the CPU does: 32-bit writes zero-extend, 8- and 16-bit
/// writes keep the other bits.
pub fn write_gpr(regs: &mut kvm_regs, reg: Register, value: u64) {
    let size = reg.size();
    let high_byte = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    let Some(full) = slot(regs, reg.full_register()) else {
        return;
    };
    *full = match (size, high_byte) {
        (1, true) => (*full & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (*full & !0xff) | (value & 0xff),
        (2, _) => (*full & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    };
}

/// The linear address of `instr`'s memory operand: base + index * scale + displacement
/// (RIP-relative already resolved by the decoder), cut to the address size, plus the
/// segment base (in 64-bit mode only FS and GS have one).
pub fn effective_address(instr: &Instruction, regs: &kvm_regs, sregs: &kvm_sregs) -> u64 {
    let base = instr.memory_base();
    let offset = if base == Register::RIP || base == Register::EIP {
        instr.memory_displacement64()
    } else {
        let b = if base == Register::None {
            0
        } else {
            read_gpr(regs, base)
        };
        let index = instr.memory_index();
        let i = if index == Register::None {
            0
        } else {
            read_gpr(regs, index).wrapping_mul(u64::from(instr.memory_index_scale()))
        };
        b.wrapping_add(i)
            .wrapping_add(instr.memory_displacement64())
    };
    let long = sregs.efer & (1 << 10) != 0 && sregs.cs.l != 0;
    let address_bits = if base != Register::None {
        base.size() * 8
    } else if instr.memory_index() != Register::None {
        instr.memory_index().size() * 8
    } else if long {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let offset = match address_bits {
        64 => offset,
        32 => offset & 0xffff_ffff,
        _ => offset & 0xffff,
    };
    let segment = match instr.memory_segment() {
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        _ if long => 0,
        Register::ES => sregs.es.base,
        Register::CS => sregs.cs.base,
        Register::SS => sregs.ss.base,
        _ => sregs.ds.base,
    };
    let linear = segment.wrapping_add(offset);
    if long {
        linear
    } else {
        linear & 0xffff_ffff
    }
}
