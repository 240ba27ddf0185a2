//! The vCPU: KVM_RUN with exits turned into owned values, interrupt injection, and the
//! I/O completion that KVM expects before the next run.

use std::os::fd::AsRawFd;

use kvm_bindings::{
    kvm_guest_debug, kvm_regs, kvm_sregs, kvm_vcpu_events, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

/// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt); kvm-ioctls has no wrapper.
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

/// A KVM exit, owned (no borrow of the `kvm_run` page), so handlers and tests can use it
/// freely. `IoIn` and `MmioRead` must be answered with [`Vcpu::complete_io_in`] /
/// [`Vcpu::complete_mmio_read`] before the next run; they carry the [`PendingIoIn`] /
/// [`PendingMmioRead`] that answering them takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    IoIn {
        port: u16,
        size: u8,
        count: u32,
        /// The answer KVM waits for: only [`Vcpu::complete_io_in`] takes it.
        pending: PendingIoIn,
    },
    IoOut {
        port: u16,
        size: u8,
        data: Vec<u8>,
    },
    MmioRead {
        addr: u64,
        len: u8,
        /// The answer KVM waits for: only [`Vcpu::complete_mmio_read`] takes it.
        pending: PendingMmioRead,
    },
    MmioWrite {
        addr: u64,
        data: Vec<u8>,
    },
    Hlt,
    /// A debug exit (single-step or breakpoint): `pc` is the next instruction.
    Debug {
        pc: u64,
        exception: u32,
        dr6: u64,
    },
    IrqWindowOpen,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    InternalError {
        suberror: u32,
        data: Vec<u64>,
    },
    FailEntry {
        reason: u64,
    },
    SystemEvent {
        kind: u32,
    },
    /// KVM_RUN returned EINTR: a kick (timer, input) or immediate_exit.
    Interrupted,
    Other(String),
}

/// A port read (KVM_EXIT_IO, direction in) that KVM waits to have answered: where the data
/// goes in the `kvm_run` mapping and how much. Only [`Vcpu::run`] makes one, for the exit
/// it just returned, and [`Vcpu::complete_io_in`] consumes it; it cannot be copied, so a
/// read is answered at most once, and an answer after a later run is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct PendingIoIn {
    /// The number of the exit this read is (see `Vcpu::exits`).
    exit: u64,
    /// `kvm_run.io.data_offset`: where KVM takes the data from, within the mapping.
    data_offset: usize,
    /// `size * count` bytes.
    len: usize,
}

/// An MMIO read (KVM_EXIT_MMIO, not a write) that KVM waits to have answered. Like
/// [`PendingIoIn`]: made by [`Vcpu::run`] for the exit it just returned, consumed by
/// [`Vcpu::complete_mmio_read`], refused after a later run.
#[derive(Debug, PartialEq, Eq)]
pub struct PendingMmioRead {
    /// The number of the exit this read is (see `Vcpu::exits`).
    exit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("a {what} was answered after the vCPU ran again (exit {pending}, now {now})")]
    StaleAnswer {
        what: &'static str,
        pending: u64,
        now: u64,
    },
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    #[error("KVM_INTERRUPT (vector {vector:#x}) failed: {source}")]
    Inject { vector: u8, source: std::io::Error },
    #[error("KVM_GET_REGS failed: {0}")]
    GetRegs(kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_GET_FPU failed: {0}")]
    GetFpu(kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("KVM_SET_GUEST_DEBUG failed: {0}")]
    SetGuestDebug(kvm_ioctls::Error),
    #[error("KVM_GET_VCPU_EVENTS failed: {0}")]
    GetEvents(kvm_ioctls::Error),
    #[error("KVM_SET_VCPU_EVENTS failed: {0}")]
    SetEvents(kvm_ioctls::Error),
}

/// Up to four hardware execution breakpoints (the CPU's DR0-DR3), by linear address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecBreakpoints {
    addrs: [u64; 4],
    len: u8,
}

impl ExecBreakpoints {
    pub const NONE: ExecBreakpoints = ExecBreakpoints {
        addrs: [0; 4],
        len: 0,
    };

    /// One breakpoint at `addr`.
    pub fn at(addr: u64) -> Self {
        let mut b = Self::NONE;
        b.push(addr);
        b
    }

    /// Adds `addr` (once); false if all four are in use and it is not among them.
    pub fn push(&mut self, addr: u64) -> bool {
        if self.as_slice().contains(&addr) {
            return true;
        }
        let Some(slot) = self.addrs.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = addr;
        self.len += 1;
        true
    }

    pub fn as_slice(&self) -> &[u64] {
        &self.addrs[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    /// The guest-debug state last set (single-step, breakpoint), so it can be armed again
    /// after the VMM changes registers (real KVM keeps the trap only for the armed RIP).
    debug: std::cell::Cell<(bool, ExecBreakpoints)>,
    /// Exits returned by `run` so far; a [`PendingIoIn`] is valid only for the latest.
    exits: u64,
}

impl Vcpu {
    pub fn new(fd: VcpuFd) -> Self {
        Vcpu {
            fd,
            debug: std::cell::Cell::new((false, ExecBreakpoints::NONE)),
            exits: 0,
        }
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Address of `kvm_run.immediate_exit`, for the kick signal handler.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Runs the vCPU until the next exit.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        // Whatever KVM_RUN returns, a port read pending before it is stale now.
        self.exits += 1;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(Exit::Interrupted)
            }
            Err(e) => return Err(VcpuError::Run(e)),
        };
        let owned = match exit {
            VcpuExit::IoIn(port, data) => Exit::IoIn {
                port,
                size: 0,
                count: data.len() as u32,
                pending: PendingIoIn {
                    exit: 0,
                    data_offset: 0,
                    len: 0,
                },
            },
            VcpuExit::IoOut(port, data) => Exit::IoOut {
                port,
                size: 0,
                data: data.to_vec(),
            },
            VcpuExit::MmioRead(addr, data) => Exit::MmioRead {
                addr,
                len: data.len() as u8,
                pending: PendingMmioRead { exit: self.exits },
            },
            VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite {
                addr,
                data: data.to_vec(),
            },
            VcpuExit::Hlt => Exit::Hlt,
            VcpuExit::Debug(arch) => Exit::Debug {
                pc: arch.pc,
                exception: arch.exception,
                dr6: arch.dr6,
            },
            VcpuExit::IrqWindowOpen => Exit::IrqWindowOpen,
            VcpuExit::Shutdown => Exit::Shutdown,
            VcpuExit::InternalError => Exit::InternalError {
                suberror: 0,
                data: Vec::new(),
            },
            VcpuExit::FailEntry(reason, _) => Exit::FailEntry { reason },
            VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent { kind },
            VcpuExit::Intr => Exit::Interrupted,
            other => Exit::Other(format!("{other:?}")),
        };
        Ok(self.fill_exit_details(owned))
    }

    /// Adds what kvm-ioctls' exit leaves out: the PIO access size and internal-error data.
    fn fill_exit_details(&mut self, exit: Exit) -> Exit {
        let run = self.fd.get_kvm_run();
        match exit {
            Exit::IoIn { port, count, .. } => {
                // SAFETY: the exit reason is KVM_EXIT_IO, so `io` is the active union field.
                let io = unsafe { run.__bindgen_anon_1.io };
                debug_assert_eq!(count, u32::from(io.size) * io.count);
                Exit::IoIn {
                    port,
                    size: io.size,
                    count: io.count,
                    pending: PendingIoIn {
                        exit: self.exits,
                        data_offset: io.data_offset as usize,
                        len: usize::from(io.size) * io.count as usize,
                    },
                }
            }
            Exit::IoOut { port, data, .. } => {
                // SAFETY: as above, KVM_EXIT_IO.
                let io = unsafe { run.__bindgen_anon_1.io };
                Exit::IoOut {
                    port,
                    size: io.size,
                    data,
                }
            }
            Exit::InternalError { .. } => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is active.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Exit::InternalError {
                    suberror: internal.suberror,
                    data: internal.data[..n].to_vec(),
                }
            }
            other => other,
        }
    }

    /// Answers the port read `pending` (from the latest exit) with `data` (count * size
    /// bytes; fewer leave the rest as KVM had it).
    pub fn complete_io_in(&mut self, pending: PendingIoIn, data: &[u8]) -> Result<(), VcpuError> {
        if pending.exit != self.exits {
            return Err(VcpuError::StaleAnswer {
                what: "port read",
                pending: pending.exit,
                now: self.exits,
            });
        }
        let len = pending.len.min(data.len());
        let run = self.fd.get_kvm_run();
        let base = run as *mut kvm_bindings::kvm_run as *mut u8;
        // SAFETY: `pending` was made by `run` from this vCPU's KVM_EXIT_IO (only `run` makes
        // one, and its exit number is the latest), whose `data_offset` and `size * count`
        // the kernel guarantees to lie within this vCPU's kvm_run mapping, which lives as
        // long as `self.fd`; we write at most `size * count` bytes there, from a slice of
        // at least that many.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(pending.data_offset), len);
        }
        Ok(())
    }

    /// Answers the MMIO read `pending` (from the latest exit) with `data` (its first `len`
    /// bytes).
    pub fn complete_mmio_read(
        &mut self,
        pending: PendingMmioRead,
        data: &[u8],
    ) -> Result<(), VcpuError> {
        if pending.exit != self.exits {
            return Err(VcpuError::StaleAnswer {
                what: "MMIO read",
                pending: pending.exit,
                now: self.exits,
            });
        }
        let run = self.fd.get_kvm_run();
        // SAFETY: `pending` belongs to the latest exit (checked above), a KVM_EXIT_MMIO,
        // so `mmio` is the active union field.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(data.len()).min(mmio.data.len());
        mmio.data[..len].copy_from_slice(&data[..len]);
        Ok(())
    }

    /// Whether KVM would accept an external interrupt now (IF set, no STI/MOV SS shadow).
    pub fn ready_for_interrupt(&mut self) -> bool {
        let run = self.fd.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    /// The guest's IF flag as of the last exit.
    pub fn interrupts_enabled(&mut self) -> bool {
        self.fd.get_kvm_run().if_flag != 0
    }

    /// Asks KVM to exit as soon as the guest can take an interrupt.
    pub fn request_interrupt_window(&mut self, on: bool) {
        self.fd.get_kvm_run().request_interrupt_window = u8::from(on);
    }

    /// Injects external interrupt `vector` (KVM_INTERRUPT).
    pub fn inject(&mut self, vector: u8) -> Result<(), VcpuError> {
        let irq: u32 = u32::from(vector);
        // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt { __u32 irq; }` from the
        // pointer, which points to a live u32; the fd is a vCPU fd.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_INTERRUPT, &irq as *const u32) };
        if ret < 0 {
            return Err(VcpuError::Inject {
                vector,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Has KVM copy registers and special registers into `kvm_run` on every exit, so the
    /// stepping loop reads them without an ioctl.
    pub fn enable_sync_regs(&mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
    }

    /// Registers as of the last exit (needs `enable_sync_regs`).
    pub fn synced_regs(&mut self) -> kvm_regs {
        // SAFETY: `s.regs` is the x86 view of the sync area, valid after an exit with
        // KVM_SYNC_X86_REGS requested; both views are plain data.
        unsafe { self.fd.get_kvm_run().s.regs.regs }
    }

    /// Special registers as of the last exit (needs `enable_sync_regs`).
    pub fn synced_sregs(&mut self) -> kvm_sregs {
        // SAFETY: as for `synced_regs`, with KVM_SYNC_X86_SREGS.
        unsafe { self.fd.get_kvm_run().s.regs.sregs }
    }

    /// Arms (or disarms) single-stepping. On real KVM the trap is re-armed only while RIP
    /// equals the RIP at this call, so callers set registers first, then call this.
    pub fn set_single_step(&self, on: bool) -> Result<(), VcpuError> {
        self.set_guest_debug(on, ExecBreakpoints::NONE)
    }

    /// Single-step on or off, plus hardware execution breakpoints (DR0-DR3) at the
    /// linear addresses of `breakpoints`.
    pub fn set_guest_debug(
        &self,
        step: bool,
        breakpoints: ExecBreakpoints,
    ) -> Result<(), VcpuError> {
        let mut debug = kvm_guest_debug::default();
        if step {
            debug.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        if !breakpoints.is_empty() {
            debug.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            for (slot, &addr) in breakpoints.as_slice().iter().enumerate() {
                debug.arch.debugreg[slot] = addr;
                // DR7: local enable Ln; R/Wn = 00 (execute) and LENn = 00 stay zero.
                debug.arch.debugreg[7] |= 1 << (2 * slot);
            }
        }
        self.fd
            .set_guest_debug(&debug)
            .map_err(VcpuError::SetGuestDebug)?;
        self.debug.set((step, breakpoints));
        Ok(())
    }

    /// Sets the guest-debug state last set again (after the VMM moved RIP).
    pub fn rearm_guest_debug(&self) -> Result<(), VcpuError> {
        let (step, breakpoints) = self.debug.get();
        if step || !breakpoints.is_empty() {
            self.set_guest_debug(step, breakpoints)?;
        }
        Ok(())
    }

    /// The x87 status word (FSW).
    pub fn fpu_status(&self) -> Result<u16, VcpuError> {
        self.fd.get_fpu().map(|f| f.fsw).map_err(VcpuError::GetFpu)
    }

    pub fn events(&self) -> Result<kvm_vcpu_events, VcpuError> {
        self.fd.get_vcpu_events().map_err(VcpuError::GetEvents)
    }

    pub fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), VcpuError> {
        self.fd
            .set_vcpu_events(events)
            .map_err(VcpuError::SetEvents)
    }

    pub fn regs(&self) -> Result<kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(VcpuError::GetRegs)
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(regs).map_err(VcpuError::SetRegs)
    }

    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(VcpuError::GetSregs)
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        self.fd.set_sregs(sregs).map_err(VcpuError::SetSregs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::step_probe::ScratchVm;

    /// Real mode: `in al, 0x10; in al, 0x10; out 0x11, al; hlt`.
    const TWO_READS: &[u8] = &[0xe4, 0x10, 0xe4, 0x10, 0xe6, 0x11, 0xf4];

    fn read_exit(vcpu: &mut Vcpu) -> PendingIoIn {
        match vcpu.run().unwrap() {
            Exit::IoIn {
                port: 0x10,
                size: 1,
                count: 1,
                pending,
            } => pending,
            other => panic!("expected the port read, got {other:?}"),
        }
    }

    #[test]
    fn a_port_read_is_answered_by_its_own_exit_only() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let mut vm = ScratchVm::new(&kvm, TWO_READS).unwrap();
        let first = read_exit(&mut vm.vcpu);
        vm.vcpu.complete_io_in(first, &[0x5a]).unwrap();
        let second = read_exit(&mut vm.vcpu);
        // The vCPU runs again before the second read is answered: the answer is refused.
        let exit = vm.vcpu.run().unwrap();
        assert!(matches!(exit, Exit::IoOut { port: 0x11, .. }), "{exit:?}");
        let err = vm.vcpu.complete_io_in(second, &[0xa5]).unwrap_err();
        assert!(
            matches!(
                err,
                VcpuError::StaleAnswer {
                    what: "port read",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_answer_is_what_the_guest_reads() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let mut vm = ScratchVm::new(&kvm, TWO_READS).unwrap();
        for value in [0x5a, 0xc3] {
            let pending = read_exit(&mut vm.vcpu);
            vm.vcpu.complete_io_in(pending, &[value]).unwrap();
        }
        match vm.vcpu.run().unwrap() {
            Exit::IoOut {
                port: 0x11, data, ..
            } => assert_eq!(data, vec![0xc3]),
            other => panic!("expected the port write, got {other:?}"),
        }
    }

    /// Real mode: `mov al, [0x3000]` (unbacked: an MMIO read); `out 0x11, al`; `hlt`.
    const MMIO_READ: &[u8] = &[0xa0, 0x00, 0x30, 0xe6, 0x11, 0xf4];

    #[test]
    fn an_mmio_read_is_answered_by_its_own_exit_only() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let mut vm = ScratchVm::new(&kvm, MMIO_READ).unwrap();
        let pending = match vm.vcpu.run().unwrap() {
            Exit::MmioRead {
                addr: 0x3000,
                len: 1,
                pending,
            } => pending,
            other => panic!("expected the MMIO read, got {other:?}"),
        };
        vm.vcpu.complete_mmio_read(pending, &[0x5a]).unwrap();
        match vm.vcpu.run().unwrap() {
            Exit::IoOut {
                port: 0x11, data, ..
            } => assert_eq!(data, [0x5a]),
            other => panic!("expected the port write, got {other:?}"),
        }
        let stale = PendingMmioRead { exit: 1 };
        let err = vm.vcpu.complete_mmio_read(stale, &[0]).unwrap_err();
        assert!(
            matches!(
                err,
                VcpuError::StaleAnswer {
                    what: "MMIO read",
                    ..
                }
            ),
            "{err}"
        );
    }
}
