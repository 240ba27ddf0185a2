//! Breakpoints and watchpoints, evaluated by ttvm at each position of the replay (never by
//! writing `int3` into guest memory, so checkpoints stay clean):
//! - an execution breakpoint hits at a position whose RIP is its address;
//! - a watchpoint hits when the instruction at a position reads or writes its bytes, found
//!   by decoding that instruction (iced-x86) and computing its memory operands from the
//!   registers. Going forwards gdb is told after the instruction ran (the next position);
//!   going backwards, at the instruction itself (the state just before the access), as rr
//!   does, so gdb shows the old and new values and the line of the access.
//!
//! Limits, documented: a `rep` string instruction is taken to touch its whole remaining
//! range (RCX elements, at most 1024, what one step covers on KVMs that batch iterations);
//! an instruction whose step also delivered an interrupt is judged by the instruction at
//! RIP before the delivery.

use std::collections::BTreeSet;

use gdbstub::target::ext::breakpoints::WatchKind;
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};
use ttvm_vmm::machine::paging::CodeAtRip;
use ttvm_vmm::Machine;

/// One watched range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchpoint {
    pub addr: u64,
    pub len: u64,
    pub kind: WatchKind,
}

/// Everything that can stop execution.
#[derive(Debug, Clone, Default)]
pub struct StopPoints {
    pub breakpoints: BTreeSet<u64>,
    pub watchpoints: Vec<Watchpoint>,
}

/// One memory access of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub addr: u64,
    pub len: u64,
    pub read: bool,
    pub write: bool,
}

/// What hit at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    Breakpoint,
    Watch { kind: WatchKind, addr: u64 },
}

impl StopPoints {
    pub fn is_empty(&self) -> bool {
        self.breakpoints.is_empty() && self.watchpoints.is_empty()
    }

    /// A breakpoint at the machine's current RIP.
    pub fn breakpoint_at(&self, m: &Machine) -> bool {
        !self.breakpoints.is_empty()
            && m.stepped_kvm_regs()
                .is_some_and(|r| self.breakpoints.contains(&r.rip))
    }

    /// The first watchpoint the instruction at the current position triggers.
    pub fn watch_hit(&self, m: &Machine) -> Option<Hit> {
        if self.watchpoints.is_empty() {
            return None;
        }
        for a in accesses(m) {
            for w in &self.watchpoints {
                let overlaps =
                    a.addr < w.addr.saturating_add(w.len) && w.addr < a.addr.saturating_add(a.len);
                let kind_matches = match w.kind {
                    WatchKind::Write => a.write,
                    WatchKind::Read => a.read,
                    WatchKind::ReadWrite => a.read || a.write,
                };
                if overlaps && kind_matches {
                    return Some(Hit::Watch {
                        kind: w.kind,
                        addr: w.addr,
                    });
                }
            }
        }
        None
    }
}

fn reg_value(regs: &kvm_regs, sregs: &kvm_sregs, reg: Register) -> Option<u64> {
    let full = match reg.full_register() {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        Register::ES => sregs.es.base,
        Register::CS => sregs.cs.base,
        Register::SS => sregs.ss.base,
        Register::DS => sregs.ds.base,
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        _ => return None,
    };
    let size = reg.size();
    Some(match size {
        1 if reg.is_gpr8()
            && matches!(
                reg,
                Register::AH | Register::BH | Register::CH | Register::DH
            ) =>
        {
            (full >> 8) & 0xff
        }
        1 => full & 0xff,
        2 if !reg.is_segment_register() => full & 0xffff,
        4 => full & 0xffff_ffff,
        _ => full,
    })
}

/// The memory accesses of the instruction at the machine's current position.
pub fn accesses(m: &Machine) -> Vec<Access> {
    let (Some(regs), Some(sregs)) = (m.stepped_kvm_regs(), m.stepped_sregs()) else {
        return Vec::new();
    };
    let code = CodeAtRip::fetch(m.memory(), regs, sregs);
    let mut decoder = Decoder::with_ip(code.bitness, code.code(), regs.rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Vec::new();
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let rep = instr.has_rep_prefix() || instr.has_repe_prefix() || instr.has_repne_prefix();
    info.used_memory()
        .iter()
        .filter_map(|mem| {
            let addr = mem.virtual_address(0, |reg, _, _| reg_value(regs, sregs, reg))?;
            let size = mem.memory_size().size() as u64;
            let len = if rep && instr.is_string_instruction() {
                size * (regs.rcx & 0xffff_ffff).clamp(1, 1024)
            } else {
                size.max(1)
            };
            let (read, write) = match mem.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write | OpAccess::CondWrite => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                _ => return None,
            };
            // Descending string operations (DF set) cover the range below the address.
            let addr = if rep && regs.rflags & (1 << 10) != 0 {
                addr.saturating_sub(len - size)
            } else {
                addr
            };
            Some(Access {
                addr,
                len,
                read,
                write,
            })
        })
        .collect()
}
