//! The instructions the single-step loop emulates instead of stepping: the ones that read
//! host state KVM does not let us intercept (RDTSC/RDTSCP/RDRAND/RDSEED/RDMSR-TSC) and HLT,
//! with values from the driver; and the check that stops before user-mode code on a KVM
//! that cannot step it.

use iced_x86::Register;
use kvm_bindings::kvm_regs;

use super::{HostValueKind, LoopState, Position, StepDriver, SteppedError, RFLAGS_IF};
use crate::machine::decode::{self, Emulated};
use crate::machine::paging::{CodeAtRip, Mmu};
use crate::machine::{Machine, MachineError};

const RFLAGS_CF: u64 = 1;
/// CF, PF, AF, ZF, SF, OF: RDRAND/RDSEED clear all but CF.
const RFLAGS_ARITH: u64 = 0x8d5;

impl Machine {
    /// The instruction at RIP if the VMM must emulate it, with its length. An error if this
    /// KVM would run it together with an instruction that must be seen (and the VMM cannot
    /// run it instead).
    pub(super) fn next_instruction(
        &self,
        mmu: &Mmu,
        regs: &kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
        pos: Position,
    ) -> Result<Option<(Emulated, u8)>, MachineError> {
        let code = CodeAtRip::fetch(&self.mem, regs, sregs);
        let (bitness, linear, bytes, n) = (code.bitness, code.linear, code.bytes, code.len);
        // Where user mode cannot be stepped, its code would run unseen inside the step of
        // the instruction that returns to it (up to the next exception or interrupt): stop
        // before that instruction.
        if !self.step_semantics.is_none_or(|s| s.user_mode) {
            let to_user = match decode::kernel_return(&bytes[..n], bitness) {
                Some(decode::KernelReturn::Always) => true,
                Some(decode::KernelReturn::Iret { size }) => {
                    let mut cs = [0u8; 8];
                    let stack = if bitness == 64 {
                        regs.rsp
                    } else {
                        sregs.ss.base.wrapping_add(regs.rsp & 0xffff_ffff) & 0xffff_ffff
                    };
                    mmu.read_virt(&self.mem, stack + u64::from(size), &mut cs[..size as usize])
                        == size as usize
                        && cs[0] & 3 == 3
                }
                None => false,
            };
            if to_user {
                return Err(MachineError::UserModeNotSteppable {
                    rip: regs.rip,
                    position: pos,
                });
            }
        }
        // Whether the instruction after the one of `len` bytes at RIP must be emulated.
        let follower_emulated = |len: u8| {
            let mut after = [0u8; 15];
            let m = mmu.read_virt(&self.mem, linear + u64::from(len), &mut after);
            decode::may_be_emulated(&after[..m], bitness)
                && decode::classify(&after[..m], bitness, regs.rcx as u32)
                    .is_some_and(|f| f.emulated.is_some())
        };
        if decode::is_sti(&bytes[..n]) {
            // STI's shadow hides the next instruction from single-step on real CPUs: if
            // that one must be emulated, emulate the STI too.
            let Some(sti) = decode::classify(&bytes[..n], bitness, regs.rcx as u32) else {
                return Ok(None);
            };
            return Ok(follower_emulated(sti.len).then_some((Emulated::Sti, sti.len)));
        }
        let merges = self.step_semantics.map(|s| s.merges).unwrap_or_default();
        if !merges.is_empty() {
            if let Some((name, len, no_effect)) = decode::merge_candidate(&bytes[..n], bitness) {
                if merges.contains(name) {
                    if no_effect {
                        return Ok(Some((Emulated::NoEffect, len)));
                    }
                    if follower_emulated(len) {
                        return Err(MachineError::UnexpectedExit(format!(
                            "this KVM runs `{name}` at {linear:#x} together with the next \
                             instruction in one single step, and that one must be emulated \
                             by ttvm (it reads host state): this guest cannot be recorded \
                             exactly on this KVM"
                        )));
                    }
                }
            }
        }
        // Where single-step is the guest's trap flag, the gate of an interrupt an
        // instruction raises clears it and the handler would run unseen inside one step:
        // the VMM executes it instead (in protected and long mode; real mode's IVT is left
        // to KVM).
        let trap_flag_stepping = self.step_semantics.is_some_and(|s| s.rearm_each_step);
        if trap_flag_stepping
            && sregs.cr0 & 1 != 0
            && decode::raises_interrupt(&bytes[..n], bitness)
        {
            return Ok(Some((Emulated::RaisesInterrupt, 0)));
        }
        if !decode::may_be_emulated(&bytes[..n], bitness) {
            return Ok(None);
        }
        let Some(next) = decode::classify(&bytes[..n], bitness, regs.rcx as u32) else {
            return Ok(None);
        };
        Ok(next.emulated.map(|e| (e, next.len)))
    }

    /// Emulates one instruction: registers set by ioctl, interrupt shadow cleared, then
    /// single-step re-armed (in that order, for real KVM's sake).
    pub(super) fn emulate<D: StepDriver>(
        &mut self,
        driver: &mut D,
        st: &mut LoopState,
        regs: &mut kvm_regs,
        what: Emulated,
        len: u8,
    ) -> Result<(), SteppedError<D::Error>> {
        let pos = st.clock.pos;
        tracing::trace!(
            pos,
            ?what,
            rip = format_args!("{:#x}", regs.rip),
            "emulating"
        );
        let virtual_tsc = st.tsc_base.wrapping_add(st.clock.now_ns());
        let mut ask = |kind| {
            driver
                .host_value(pos, kind, virtual_tsc)
                .map_err(SteppedError::Driver)
        };
        match what {
            Emulated::Rdtsc | Emulated::RdmsrTsc => {
                let (tsc, _) = ask(HostValueKind::Rdtsc)?;
                set_edx_eax(regs, tsc);
            }
            Emulated::Rdtscp => {
                let (tsc, _) = ask(HostValueKind::Rdtscp)?;
                set_edx_eax(regs, tsc);
                regs.rcx = 0; // IA32_TSC_AUX: CPU 0
            }
            Emulated::Rdrand { dest } => {
                let (value, ok) = ask(HostValueKind::Rdrand)?;
                set_random(regs, dest, value, ok);
            }
            Emulated::Rdseed { dest } => {
                let (value, ok) = ask(HostValueKind::Rdseed)?;
                set_random(regs, dest, value, ok);
            }
            Emulated::Hlt => st.halted = true,
            Emulated::Sti => regs.rflags |= RFLAGS_IF,
            Emulated::NoEffect => {}
            Emulated::RaisesInterrupt => {
                return Err(MachineError::UnexpectedExit(
                    "an interrupting instruction reached the instruction emulator (the \
                     stepping loop executes those)"
                        .to_string(),
                )
                .into())
            }
        }
        regs.rip = regs.rip.wrapping_add(u64::from(len));
        self.vcpu.set_regs(regs).map_err(MachineError::from)?;
        let mut events = self.vcpu.events().map_err(MachineError::from)?;
        if events.interrupt.shadow != 0 {
            events.interrupt.shadow = 0;
            self.vcpu.set_events(&events).map_err(MachineError::from)?;
        }
        self.vcpu
            .set_single_step(true)
            .map_err(MachineError::from)?;
        // After an emulated STI the next instruction is in its shadow: no interrupt yet
        // (that instruction is always emulated too, see `next_instruction`).
        st.ready_override = Some(what != Emulated::Sti && regs.rflags & RFLAGS_IF != 0);
        st.clock.pos += 1;
        st.emulated += 1;
        Ok(())
    }
}

fn set_edx_eax(regs: &mut kvm_regs, value: u64) {
    regs.rax = value & 0xffff_ffff;
    regs.rdx = value >> 32;
}

fn set_random(regs: &mut kvm_regs, dest: Register, value: u64, ok: bool) {
    // `dest` is the sized register: 32-bit writes zero-extend, 16-bit ones keep the rest.
    crate::machine::fallback::write_gpr(regs, dest, if ok { value } else { 0 });
    regs.rflags &= !RFLAGS_ARITH;
    if ok {
        regs.rflags |= RFLAGS_CF;
    }
}
