//! Running the machine: the exit loop (free-running under KVM, timers by signal kicks).
//!
//! `handle_exit` is a function over (machine, exit), so tests can feed it synthetic exits.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::machine::devices::DeviceCtx;
use crate::machine::vcpu::Exit;
use crate::machine::{Machine, MachineError, RunStats};
use crate::run::end::RunEnd;
use crate::run::inputs::{HostInputs, SerialPoll};
use crate::run::kick::Kicker;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub end: RunEnd,
    pub stats: RunStats,
    pub duration: Duration,
}

/// KVM_INTERNAL_ERROR_EMULATION: KVM's instruction emulator failed.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// What the loop does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// The guest executed HLT: wait for an interrupt.
    Halted,
    /// KVM could not emulate the instruction at RIP; the VMM executed it (registers were
    /// set by ioctl, so registers synced into `kvm_run` by that exit are stale).
    ExecutedByVmm,
}

impl Machine {
    /// Runs the guest until it ends, free-running under KVM.
    pub fn run(&mut self, inputs: &mut dyn HostInputs) -> Result<RunReport, MachineError> {
        let started = Instant::now();
        self.boot_wall_clock_ns = inputs.boot_wall_clock_ns();
        let mut kicker = Kicker::new(self.vcpu.immediate_exit_ptr(), inputs.epoch())?;
        inputs.set_kick(kicker.handle());
        let mut armed = None;
        let end = loop {
            // Clear a kick first, then look at the world: a kick after this is not lost.
            self.vcpu.set_immediate_exit(false);
            self.poll_host(inputs);
            if let Some(end) = self.take_end()? {
                break end;
            }
            self.inject_pending()?;
            let deadline = self.devices.next_timer_deadline_ns();
            if deadline != armed {
                kicker.arm(deadline)?;
                armed = deadline;
            }
            let exit = self.vcpu.run()?;
            self.now_ns = inputs.now_ns();
            if self.handle_exit(exit)? == Next::Halted {
                self.wait_while_halted(inputs)?;
            }
        };
        kicker.arm(None)?;
        Ok(RunReport {
            end,
            stats: self.stats.clone(),
            duration: started.elapsed(),
        })
    }

    /// The end decided by a device or an exit, or a serial output failure.
    fn take_end(&mut self) -> Result<Option<RunEnd>, MachineError> {
        if let Some(e) = self.devices.serial.take_output_error() {
            return Err(e.into());
        }
        Ok(self.pending_end.take())
    }

    /// Brings host input and guest time into the devices: serial bytes, hang-up, timers.
    pub(crate) fn poll_host(&mut self, inputs: &mut dyn HostInputs) {
        self.now_ns = inputs.now_ns();
        let mut ctx = self.device_ctx();
        let serial = &mut self.devices.serial;
        if !serial.is_hung_up() && serial.rx_room() > 0 {
            match inputs.poll_serial(serial.rx_room()) {
                SerialPoll::Bytes(bytes) => {
                    serial.receive(&bytes, &mut ctx);
                }
                SerialPoll::Ended => serial.hang_up(),
                SerialPoll::Nothing => {}
            }
        }
        self.devices.poll_timers(&mut ctx);
        self.apply(ctx, |_| 0);
    }

    /// Injects the PICs' pending interrupt if the guest can take it, else asks KVM to exit
    /// when it can.
    pub(crate) fn inject_pending(&mut self) -> Result<(), MachineError> {
        if !self.devices.pic.has_pending() {
            self.vcpu.request_interrupt_window(false);
            return Ok(());
        }
        if self.vcpu.ready_for_interrupt() {
            let vector = self.devices.pic.acknowledge();
            self.vcpu.inject(vector)?;
            self.vcpu.request_interrupt_window(false);
            self.stats.interrupts_injected += 1;
            tracing::trace!(vector, "interrupt injected");
        } else {
            self.vcpu.request_interrupt_window(true);
        }
        Ok(())
    }

    /// Handles one exit. Guest-caused ends are left in `pending_end`.
    pub fn handle_exit(&mut self, exit: Exit) -> Result<Next, MachineError> {
        self.stats.exits += 1;
        match exit {
            Exit::IoIn {
                port,
                size,
                count,
                pending,
            } => {
                self.stats.pio_exits += 1;
                let mut ctx = self.device_ctx();
                let total = usize::from(size) * count as usize;
                let mut data = vec![0u8; total];
                for (i, byte) in data.iter_mut().enumerate() {
                    let offset = (i % usize::from(size.max(1))) as u16;
                    *byte = self.pio_read(port.wrapping_add(offset), &mut ctx);
                }
                self.vcpu.complete_io_in(pending, &data)?;
                self.apply(ctx, Self::rip_or_zero);
            }
            Exit::IoOut { port, size, data } => {
                self.stats.pio_exits += 1;
                let mut ctx = self.device_ctx();
                for (i, byte) in data.iter().enumerate() {
                    let offset = (i % usize::from(size.max(1))) as u16;
                    self.pio_write(port.wrapping_add(offset), *byte, &mut ctx);
                }
                self.apply(ctx, Self::rip_or_zero);
            }
            Exit::MmioRead { addr, len, pending } => {
                self.stats.mmio_exits += 1;
                tracing::debug!(
                    addr = format_args!("{addr:#x}"),
                    len,
                    "read from unbacked MMIO"
                );
                self.vcpu.complete_mmio_read(pending, &[0xff; 8])?;
            }
            Exit::MmioWrite { addr, data } => {
                self.stats.mmio_exits += 1;
                tracing::debug!(
                    addr = format_args!("{addr:#x}"),
                    ?data,
                    "write to unbacked MMIO ignored"
                );
            }
            Exit::Hlt => {
                self.stats.hlt_exits += 1;
                return Ok(Next::Halted);
            }
            Exit::IrqWindowOpen => {}
            Exit::Interrupted => self.stats.kicks += 1,
            Exit::Shutdown => {
                let rip = self.rip_or_zero();
                self.pending_end = Some(RunEnd::TripleFault { rip });
            }
            Exit::InternalError { suberror, data } => {
                let mut fallback = None;
                if suberror == KVM_INTERNAL_ERROR_EMULATION {
                    match self.execute_unemulated()? {
                        Ok(_) => return Ok(Next::ExecutedByVmm),
                        Err(e) => fallback = Some(e),
                    }
                }
                let detail = match suberror {
                    1 => format!(
                        "KVM_INTERNAL_ERROR_EMULATION: instruction emulation failed, and {}",
                        fallback.map_or_else(String::new, |e| e.to_string())
                    ),
                    2 => "KVM_INTERNAL_ERROR_SIMUL_EX: exception during exception delivery"
                        .to_string(),
                    3 => "KVM_INTERNAL_ERROR_DELIVERY_EV: event delivery failed".to_string(),
                    n => format!("KVM internal error, suberror {n}, data {data:x?}"),
                };
                self.end_with_emulation_error(detail);
            }
            Exit::FailEntry { reason } => self
                .end_with_emulation_error(format!("VM entry failed, hardware reason {reason:#x}")),
            Exit::SystemEvent { kind } => {
                // KVM_SYSTEM_EVENT_RESET = 2; the others mean the VM cannot go on.
                if kind == 2 {
                    let rip = self.rip_or_zero();
                    self.pending_end = Some(RunEnd::Reset { rip });
                } else {
                    self.end_with_emulation_error(format!("KVM system event {kind}"));
                }
            }
            Exit::Debug { pc, exception, .. } => {
                return Err(MachineError::UnexpectedExit(format!(
                    "debug exit (exception {exception}) at {pc:#x} while not debugging"
                )))
            }
            Exit::Other(what) => {
                self.end_with_emulation_error(format!("unhandled KVM exit {what}"))
            }
        }
        Ok(Next::Continue)
    }

    /// A context for device accesses at the current guest time.
    fn device_ctx(&self) -> DeviceCtx {
        DeviceCtx::new(self.now_ns, self.boot_wall_clock_ns)
    }

    /// Guest HLT: wait (in host time) for a timer deadline or input, or end the run when
    /// nothing can ever wake the guest.
    fn wait_while_halted(&mut self, inputs: &mut dyn HostInputs) -> Result<(), MachineError> {
        if !self.vcpu.interrupts_enabled() {
            self.end_halted(false);
            return Ok(());
        }
        loop {
            self.poll_host(inputs);
            if self.pending_end.is_some() || self.devices.pic.has_pending() {
                return Ok(());
            }
            let deadline = self.devices.next_timer_deadline_ns();
            if deadline.is_none() && self.devices.serial.is_hung_up() {
                self.end_halted(true);
                return Ok(());
            }
            inputs.wait(deadline);
        }
    }

    fn end_halted(&mut self, interrupts_enabled: bool) {
        let rip = self.rip_or_zero();
        // KVM reports HLT with RIP already past the instruction.
        self.pending_end = Some(RunEnd::HaltedForGood {
            rip: rip.wrapping_sub(1),
            interrupts_enabled,
        });
    }

    fn end_with_emulation_error(&mut self, detail: String) {
        let rip = self.rip_or_zero();
        let bytes = self.instruction_bytes(rip);
        self.pending_end = Some(RunEnd::EmulationError { rip, bytes, detail });
    }

    fn rip_or_zero(&self) -> u64 {
        self.vcpu.regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Up to 15 bytes at `rip` (CS-relative), translated as the CPU would.
    pub fn instruction_bytes(&self, rip: u64) -> Vec<u8> {
        let Ok(sregs) = self.vcpu.sregs() else {
            return Vec::new();
        };
        let long_mode = sregs.efer & (1 << 10) != 0;
        let linear = if long_mode {
            rip
        } else {
            sregs.cs.base.wrapping_add(rip) & 0xffff_ffff
        };
        let paging = sregs.cr0 & (1 << 31) != 0;
        let mut bytes = Vec::new();
        for i in 0..15u64 {
            let addr = linear.wrapping_add(i);
            let phys = if paging {
                match self.vcpu.fd().translate_gva(addr) {
                    Ok(t) if t.valid != 0 => t.physical_address,
                    _ => break,
                }
            } else {
                addr
            };
            match self.mem.read_obj::<u8>(GuestAddress(phys)) {
                Ok(b) => bytes.push(b),
                Err(_) => break,
            }
        }
        bytes
    }
}
