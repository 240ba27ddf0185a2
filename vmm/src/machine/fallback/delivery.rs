//! Interrupt and exception delivery through the guest's IDT, and IRET, as the CPU does
//! them in long mode and in 32-bit protected mode (interrupt and trap gates; task gates,
//! 16-bit gates, virtual-8086 mode and real mode are refused with an error).

use iced_x86::Instruction;
use kvm_bindings::kvm_segment;

use super::{
    Cpu, FallbackError, LinearMemory, RFLAGS_FIXED, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_NT, RFLAGS_RF,
    RFLAGS_TF, RFLAGS_VM,
};

/// The flags IRET loads (CF PF AF ZF SF TF IF DF OF IOPL NT RF AC VIF VIP ID).
const RFLAGS_IRET: u64 = 0x3f_7fd5;

const GATE_INTERRUPT: u8 = 0xe;
const GATE_TRAP: u8 = 0xf;

fn err(vector: u8, reason: impl Into<String>) -> FallbackError {
    FallbackError::Delivery {
        vector,
        reason: reason.into(),
    }
}

fn long_mode(cpu: &Cpu) -> bool {
    cpu.sregs.efer & (1 << 10) != 0
}

/// Delivers `vector` (an exception with `error` code, or a software interrupt) with
/// `return_rip` as the saved instruction pointer.
pub fn deliver(
    cpu: &mut Cpu,
    mem: &mut dyn LinearMemory,
    vector: u8,
    return_rip: u64,
    error: Option<u32>,
) -> Result<(), FallbackError> {
    if cpu.sregs.cr0 & 1 == 0 {
        return Err(err(vector, "real-mode delivery is not supported"));
    }
    if cpu.regs.rflags & RFLAGS_VM != 0 {
        return Err(err(vector, "virtual-8086 mode is not supported"));
    }
    let long = long_mode(cpu);
    let entry = if long { 16 } else { 8 };
    let v = u64::from(vector);
    if v * entry + entry - 1 > u64::from(cpu.sregs.idt.limit) {
        return Err(err(vector, "beyond the IDT limit"));
    }
    let mut gate = [0u8; 16];
    if !mem.read(cpu.sregs.idt.base + v * entry, &mut gate[..entry as usize]) {
        return Err(err(vector, "the IDT entry is not mapped"));
    }
    let access = gate[5];
    let kind = access & 0xf;
    if access & 0x80 == 0 {
        return Err(err(vector, "the gate is not present"));
    }
    if kind != GATE_INTERRUPT && kind != GATE_TRAP {
        return Err(err(vector, format!("gate type {kind:#x} is not supported")));
    }
    let selector = u16::from_le_bytes([gate[2], gate[3]]);
    let mut offset = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
        | u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16;
    if long {
        offset |= u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32;
    }
    let new_cs = load_descriptor(cpu, mem, selector).map_err(|r| err(vector, r))?;
    let cpl = cpu.sregs.cs.dpl;
    let new_cpl = new_cs.dpl;
    let old_ss = cpu.sregs.ss.selector;
    let old_rsp = cpu.regs.rsp;
    let old_flags = cpu.regs.rflags;
    let old_cs = cpu.sregs.cs.selector;
    if long {
        let ist = gate[4] & 7;
        let tss = cpu.sregs.tr.base;
        let mut rsp = if ist != 0 {
            read_u64(mem, tss + 0x24 + 8 * u64::from(ist - 1))
                .ok_or_else(|| err(vector, "the TSS is not mapped"))?
        } else if new_cpl < cpl {
            read_u64(mem, tss + 4 + 8 * u64::from(new_cpl))
                .ok_or_else(|| err(vector, "the TSS is not mapped"))?
        } else {
            old_rsp
        };
        rsp &= !0xf;
        let mut frame = vec![
            return_rip,
            u64::from(old_cs),
            old_flags,
            old_rsp,
            u64::from(old_ss),
        ];
        if let Some(code) = error {
            frame.insert(0, u64::from(code));
        }
        let bytes: Vec<u8> = frame.iter().flat_map(|w| w.to_le_bytes()).collect();
        rsp -= bytes.len() as u64;
        if !mem.write(rsp, &bytes) {
            return Err(err(vector, format!("the stack at {rsp:#x} is not mapped")));
        }
        if new_cpl < cpl {
            // A privilege change loads a null SS with RPL = the new CPL.
            cpu.sregs.ss.selector = u16::from(new_cpl);
            cpu.sregs.ss.dpl = new_cpl;
        }
        cpu.regs.rsp = rsp;
    } else {
        let mut frame: Vec<u32> = vec![return_rip as u32, u32::from(old_cs), old_flags as u32];
        let mut esp = old_rsp as u32;
        let mut ss_base = cpu.sregs.ss.base;
        if new_cpl < cpl {
            let tss = cpu.sregs.tr.base;
            let mut slot = [0u8; 8];
            if !mem.read(tss + 4 + 8 * u64::from(new_cpl), &mut slot) {
                return Err(err(vector, "the TSS is not mapped"));
            }
            esp = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
            let ss_sel = u16::from_le_bytes([slot[4], slot[5]]);
            let ss = load_descriptor(cpu, mem, ss_sel).map_err(|r| err(vector, r))?;
            ss_base = ss.base;
            cpu.sregs.ss = ss;
            frame.extend([old_rsp as u32, u32::from(old_ss)]);
        }
        if let Some(code) = error {
            frame.insert(0, code);
        }
        let bytes: Vec<u8> = frame.iter().flat_map(|w| w.to_le_bytes()).collect();
        esp = esp.wrapping_sub(bytes.len() as u32);
        let linear = ss_base.wrapping_add(u64::from(esp)) & 0xffff_ffff;
        if !mem.write(linear, &bytes) {
            return Err(err(
                vector,
                format!("the stack at {linear:#x} is not mapped"),
            ));
        }
        cpu.regs.rsp = (old_rsp & !0xffff_ffff) | u64::from(esp);
        offset &= 0xffff_ffff;
    }
    cpu.sregs.cs = new_cs;
    cpu.regs.rip = offset;
    cpu.regs.rflags &= !(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM);
    if kind == GATE_INTERRUPT {
        cpu.regs.rflags &= !RFLAGS_IF;
    }
    Ok(())
}

/// IRET (any operand size) in long mode or 32-bit protected mode, returning to the same
/// or an outer privilege level.
pub fn iret(
    cpu: &mut Cpu,
    mem: &mut dyn LinearMemory,
    instr: &Instruction,
) -> Result<(), FallbackError> {
    const IRET: u8 = 0xff;
    if cpu.sregs.cr0 & 1 == 0 {
        return Err(err(IRET, "real-mode IRET is not supported"));
    }
    if cpu.regs.rflags & RFLAGS_NT != 0 && !long_mode(cpu) {
        return Err(err(IRET, "a task return (NT set) is not supported"));
    }
    let size: u64 = match instr.mnemonic() {
        iced_x86::Mnemonic::Iretq => 8,
        iced_x86::Mnemonic::Iretd => 4,
        _ => 2,
    };
    if size == 2 {
        return Err(err(IRET, "a 16-bit IRET is not supported"));
    }
    let long = cpu.sregs.efer & (1 << 10) != 0 && cpu.sregs.cs.l != 0;
    let stack = |rsp: u64| {
        if long {
            rsp
        } else {
            cpu.sregs.ss.base.wrapping_add(rsp & 0xffff_ffff) & 0xffff_ffff
        }
    };
    let pop = |mem: &mut dyn LinearMemory, rsp: &mut u64| -> Result<u64, FallbackError> {
        let mut buf = [0u8; 8];
        let at = stack(*rsp);
        if !mem.read(at, &mut buf[..size as usize]) {
            return Err(err(IRET, format!("the stack at {at:#x} is not mapped")));
        }
        *rsp = rsp.wrapping_add(size);
        Ok(u64::from_le_bytes(buf))
    };
    let mut rsp = cpu.regs.rsp;
    let rip = pop(mem, &mut rsp)?;
    let cs_sel = pop(mem, &mut rsp)? as u16;
    let flags = pop(mem, &mut rsp)?;
    if flags & RFLAGS_VM != 0 && !long {
        return Err(err(IRET, "a return to virtual-8086 mode is not supported"));
    }
    let cpl = cpu.sregs.cs.dpl;
    let new_cpl = (cs_sel & 3) as u8;
    // Long mode always pops SS:RSP; protected mode only on a return to an outer level.
    let outer = new_cpl > cpl;
    let (new_rsp, new_ss) = if long || outer {
        let r = pop(mem, &mut rsp)?;
        let s = pop(mem, &mut rsp)? as u16;
        (r, Some(s))
    } else {
        (rsp, None)
    };
    let new_cs = load_descriptor(cpu, mem, cs_sel).map_err(|r| err(IRET, r))?;
    if let Some(ss_sel) = new_ss {
        if ss_sel & !3 == 0 {
            // A null SS (long mode, returning to ring 0-2): keep the attributes.
            cpu.sregs.ss.selector = ss_sel;
            cpu.sregs.ss.dpl = new_cpl;
        } else {
            cpu.sregs.ss = load_descriptor(cpu, mem, ss_sel).map_err(|r| err(IRET, r))?;
        }
    }
    let mut mask = RFLAGS_IRET;
    if cpl > 0 {
        mask &= !RFLAGS_IOPL;
    }
    if u64::from(cpl) > (cpu.regs.rflags & RFLAGS_IOPL) >> 12 {
        mask &= !RFLAGS_IF;
    }
    if size == 4 {
        mask &= 0xffff_ffff;
    }
    cpu.regs.rflags = (cpu.regs.rflags & !mask) | (flags & mask) | RFLAGS_FIXED;
    cpu.sregs.cs = new_cs;
    cpu.regs.rip = if long { rip } else { rip & 0xffff_ffff };
    cpu.regs.rsp = if long || outer {
        new_rsp
    } else {
        (cpu.regs.rsp & !0xffff_ffff) | (new_rsp & 0xffff_ffff)
    };
    Ok(())
}

fn read_u64(mem: &mut dyn LinearMemory, at: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    mem.read(at, &mut buf).then(|| u64::from_le_bytes(buf))
}

/// Loads the GDT descriptor of `selector` as a segment register would (setting its
/// accessed bit in memory, as the CPU does).
fn load_descriptor(
    cpu: &Cpu,
    mem: &mut dyn LinearMemory,
    selector: u16,
) -> Result<kvm_segment, String> {
    if selector & 4 != 0 {
        return Err(format!(
            "selector {selector:#x} is in an LDT (not supported)"
        ));
    }
    let index = u64::from(selector & !7);
    if index == 0 || index + 7 > u64::from(cpu.sregs.gdt.limit) {
        return Err(format!(
            "selector {selector:#x} is null or beyond the GDT limit"
        ));
    }
    let at = cpu.sregs.gdt.base + index;
    let raw =
        read_u64(mem, at).ok_or_else(|| format!("the GDT entry of {selector:#x} is not mapped"))?;
    let mut segment = descriptor_to_segment(selector, raw);
    if raw & (1 << 40) == 0 {
        let accessed = (raw | (1 << 40)).to_le_bytes();
        if !mem.write(at + 5, &accessed[5..6]) {
            return Err(format!("the GDT entry of {selector:#x} is not writable"));
        }
        segment.type_ |= 1;
    }
    Ok(segment)
}

/// The segment register contents a descriptor loads.
pub fn descriptor_to_segment(selector: u16, raw: u64) -> kvm_segment {
    let g = ((raw >> 55) & 1) as u8;
    let mut limit = ((raw & 0xffff) | ((raw >> 32) & 0xf_0000)) as u32;
    if g != 0 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base: ((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24),
        limit,
        selector,
        type_: ((raw >> 40) & 0xf) as u8,
        present: ((raw >> 47) & 1) as u8,
        dpl: ((raw >> 45) & 3) as u8,
        db: ((raw >> 54) & 1) as u8,
        s: ((raw >> 44) & 1) as u8,
        l: ((raw >> 53) & 1) as u8,
        g,
        avl: ((raw >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}
