//! The machine's side of the fallback (`crate::machine::fallback`): when KVM reports that it cannot
//! emulate the instruction at RIP, the machine executes it itself on the vCPU's registers
//! and guest memory, then the guest goes on as if KVM had run it. It is deterministic (a
//! function of machine state), so record and replay need no event for it, and it works the
//! same under every clock and in free runs.

use iced_x86::Mnemonic;
use vm_memory::{Bytes, GuestAddress};

use crate::machine::fallback::{self, Cpu, FallbackError, LinearMemory};
use crate::machine::memory::GuestRam;
use crate::machine::paging::{CodeAtRip, Mmu};
use crate::machine::{Machine, MachineError};

/// Guest memory by linear address through the guest's page tables; pages the VMM writes
/// are noted for the next incremental checkpoint (KVM's dirty log does not see them).
struct GuestLinear<'a> {
    mem: &'a GuestRam,
    mmu: Mmu,
    dirty: &'a mut std::collections::BTreeSet<u32>,
}

impl GuestLinear<'_> {
    /// The guest-physical pieces of `len` bytes at `linear`, or None if any is unmapped.
    fn pieces(&self, linear: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let mut out = Vec::new();
        let mut done = 0;
        while done < len {
            let addr = linear.wrapping_add(done as u64);
            let phys = self.mmu.translate(self.mem, addr)?;
            let n = ((0x1000 - (addr & 0xfff)) as usize).min(len - done);
            out.push((phys, n));
            done += n;
        }
        Some(out)
    }
}

impl LinearMemory for GuestLinear<'_> {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        self.mmu.read_virt(self.mem, linear, buf) == buf.len()
    }

    fn write(&mut self, linear: u64, data: &[u8]) -> bool {
        let Some(pieces) = self.pieces(linear, data.len()) else {
            return false;
        };
        let mut probe = [0u8; 1];
        let in_ram = |&(phys, n): &(u64, usize)| {
            [phys, phys + n as u64 - 1]
                .iter()
                .all(|&a| self.mem.read_slice(&mut probe, GuestAddress(a)).is_ok())
        };
        if !pieces.iter().all(in_ram) {
            return false;
        }
        let mut done = 0;
        for (phys, n) in pieces {
            if self
                .mem
                .write_slice(&data[done..done + n], GuestAddress(phys))
                .is_err()
            {
                return false;
            }
            self.dirty.insert((phys >> 12) as u32);
            done += n;
        }
        true
    }
}

impl Machine {
    /// Delivers external interrupt `vector` through the guest's IDT as the CPU would, with
    /// the current RIP as the return address, and puts the vCPU at the handler's first
    /// instruction (for KVMs whose single-step is the guest's trap flag: an interrupt KVM
    /// injected would run its whole handler inside one step). `Ok(Err(..))`: the fallback
    /// cannot deliver it here (real mode, a task gate...); the vCPU is unchanged.
    pub(crate) fn deliver_external_interrupt(
        &mut self,
        vector: u8,
    ) -> Result<Result<(), FallbackError>, MachineError> {
        let mut regs = self.vcpu.regs()?;
        let mut sregs = self.vcpu.sregs()?;
        let mut mem = GuestLinear {
            mem: &self.mem,
            mmu: Mmu::from_sregs(&sregs),
            dirty: &mut self.vmm_dirty,
        };
        let mut cpu = Cpu {
            regs: &mut regs,
            sregs: &mut sregs,
            fpu_status: 0,
        };
        let rip = cpu.regs.rip;
        if let Err(e) = fallback::deliver(&mut cpu, &mut mem, vector, rip, None) {
            return Ok(Err(e));
        }
        self.vcpu.set_sregs(&sregs)?;
        self.vcpu.set_regs(&regs)?;
        self.vcpu.rearm_guest_debug()?;
        Ok(Ok(()))
    }

    /// Executes the instruction at RIP that KVM could not, and puts the vCPU after it.
    /// `Ok(Err(..))`: the fallback cannot run it either (the vCPU is unchanged).
    pub(crate) fn execute_unemulated(
        &mut self,
    ) -> Result<Result<Mnemonic, FallbackError>, MachineError> {
        let mut regs = self.vcpu.regs()?;
        let mut sregs = self.vcpu.sregs()?;
        let code = CodeAtRip::fetch(&self.mem, &regs, &sregs);
        let mut mem = GuestLinear {
            mem: &self.mem,
            mmu: Mmu::from_sregs(&sregs),
            dirty: &mut self.vmm_dirty,
        };
        let mut cpu = Cpu {
            regs: &mut regs,
            sregs: &mut sregs,
            fpu_status: self.vcpu.fpu_status()?,
        };
        let done = match fallback::execute(code.code(), &mut cpu, &mut mem) {
            Ok(done) => done,
            Err(e) => return Ok(Err(e)),
        };
        tracing::trace!(
            rip = format_args!("{:#x}", code.linear),
            mnemonic = ?done.mnemonic,
            "executed what KVM could not"
        );
        if done.sregs_changed {
            self.vcpu.set_sregs(&sregs)?;
        }
        self.vcpu.set_regs(&regs)?;
        // The instruction ran: an interrupt shadow before it is over.
        let mut events = self.vcpu.events()?;
        if events.interrupt.shadow != 0 {
            events.interrupt.shadow = 0;
            self.vcpu.set_events(&events)?;
        }
        self.vcpu.rearm_guest_debug()?;
        self.stats.executed_by_vmm += 1;
        Ok(Ok(done.mnemonic))
    }
}
