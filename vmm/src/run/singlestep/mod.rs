//! The single-step clock and the stepped run loop shared by record and replay.
//!
//! A position is the number of single steps since boot (KVM_GUESTDBG_SINGLESTEP debug
//! exits, plus one for each instruction the VMM emulates). Before each step the loop
//! decodes the next instruction and emulates RDTSC/RDTSCP/RDRAND/RDSEED/RDMSR(TSC)/HLT
//! with values from the driver. Everything that depends on the outside world is asked of a
//! `StepDriver` at a known position: the recorder answers from the host and logs, the
//! replayer answers from the log. The loop itself is the same code for both.
//!
//! Guest time is virtual: `ns_per_step` nanoseconds per step, plus the time skipped while
//! the guest is halted (it jumps to the next timer deadline). The TSC runs at 1 GHz from
//! a base the driver supplies.
//!
//! Stepping quirks handled here (see HOST-NOTES): KVM exits with HLT never happen because
//! HLT is emulated; on KVMs whose step passes over HLT or RDRAND the decode-first rule
//! makes that irrelevant; after emulation the registers are set first and single-step
//! armed after (real KVM re-arms the trap only for the RIP it was armed at); an injected
//! interrupt's step ends wherever this KVM ends it (positions are per-KVM semantics,
//! recorded in the trace header).

use std::time::{Duration, Instant};

use kvm_bindings::kvm_regs;
use serde::{Deserialize, Serialize};

use crate::machine::decode::Emulated;
use crate::machine::devices::DeviceCtx;
use crate::machine::digest::RegSnapshot;
use crate::machine::paging::Mmu;
use crate::machine::vcpu::{ExecBreakpoints, Exit};
use crate::machine::{Machine, MachineError};
use crate::run::end::RunEnd;
use crate::run::free::Next;
use crate::run::inputs::SerialPoll;

mod emulate;

/// Steps since boot.
pub type Position = u64;

/// A digest of the registers is taken every this many steps.
pub const DIGEST_INTERVAL: u64 = 4096;

/// Guest time settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeConfig {
    /// Guest nanoseconds per step (the single-step clock's nominal rate).
    pub ns_per_step: u64,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig { ns_per_step: 100 }
    }
}

/// Facts from the host at boot that the guest can observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFacts {
    /// Wall-clock time at boot (unix ns): the RTC's epoch.
    pub wall_clock_ns: u64,
    /// TSC value at boot.
    pub tsc_base: u64,
}

/// A value only the host can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostValueKind {
    Rdtsc,
    Rdtscp,
    Rdrand,
    Rdseed,
}

/// Why a driver stops a run early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The user asked (Ctrl-C).
    Interrupted,
    /// The driver reached where it wanted to be (replay target, end of log).
    Reached,
}

/// The outside world as seen at exact positions. Errors abort the run (e.g. divergence).
pub trait StepDriver {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Called once before the first step.
    fn boot(&mut self) -> Result<BootFacts, Self::Error>;
    /// Called at every position before anything else; may stop the run.
    fn boundary(&mut self, pos: Position, machine: &Machine) -> Result<Option<Stop>, Self::Error>;
    /// Serial input due at `pos` (at most `room` bytes), or the end of the input.
    fn serial(&mut self, pos: Position, room: usize) -> Result<SerialPoll, Self::Error>;
    /// Whether the interrupt controller's interrupt is injected at `pos`. `halted`: the
    /// guest waits in HLT, so nothing else can happen at `pos` until something is injected.
    fn inject_now(
        &mut self,
        pos: Position,
        pending: bool,
        ready: bool,
        halted: bool,
    ) -> Result<bool, Self::Error>;
    /// The vector injected at `pos`.
    fn injected(&mut self, pos: Position, vector: u8) -> Result<(), Self::Error>;
    /// A host value for an emulated instruction; `virtual_value` is what ttvm's own clock
    /// says (for the TSC). Returns the value and the carry flag (RDRAND/RDSEED success).
    fn host_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
        virtual_value: u64,
    ) -> Result<(u64, bool), Self::Error>;
    /// A periodic register snapshot at `pos`.
    fn snapshot(&mut self, pos: Position, regs: &RegSnapshot) -> Result<(), Self::Error>;
    /// The guest is halted with no timer armed: block until input may have arrived.
    fn wait_for_input(&mut self, pos: Position) -> Result<(), Self::Error>;
    /// The guest is halted until guest time `deadline_ns`. A live driver may wait (guest
    /// time must not run ahead of host time, so input arrives at sensible guest times);
    /// returns true if input may have arrived meanwhile, in which case the loop delivers it
    /// at this position instead of skipping time.
    /// `can_receive`: whether input arriving now could be handed to the guest.
    fn idle(
        &mut self,
        pos: Position,
        deadline_ns: u64,
        can_receive: bool,
    ) -> Result<bool, Self::Error>;
    /// The run ended at `pos`; `digest` covers registers, memory and devices.
    fn end(
        &mut self,
        pos: Position,
        end: &RunEnd,
        regs: &RegSnapshot,
        digest: u64,
    ) -> Result<(), Self::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum SteppedError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Driver(E),
}

/// How a stepped run finished.
#[derive(Debug, Clone)]
pub struct SteppedReport {
    /// The guest's end, or None if the driver stopped the run.
    pub end: Option<RunEnd>,
    pub stop: Option<Stop>,
    pub position: Position,
    pub final_regs: RegSnapshot,
    /// Digest of registers, memory and devices at the end.
    pub final_digest: u64,
    pub emulated: u64,
    /// Time spent in the loop (the final whole-machine digest excluded).
    pub duration: Duration,
    pub guest_ns: u64,
}

/// The clock: position and guest time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepClock {
    pub pos: Position,
    /// Guest nanoseconds skipped while halted.
    pub skipped_ns: u64,
    pub ns_per_step: u64,
}

impl StepClock {
    pub fn now_ns(&self) -> u64 {
        self.pos
            .saturating_mul(self.ns_per_step)
            .saturating_add(self.skipped_ns)
    }

    fn skip_to(&mut self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns > now {
            self.skipped_ns += deadline_ns - now;
        }
    }
}

/// The exceptions whose handler entries get hardware breakpoints on KVMs that single-step
/// with the guest's trap flag (`StepSemantics::rearm_each_step`), where such breakpoints
/// work (`StepSemantics::exception_breakpoints`): exception delivery clears the flag, so
/// without them the handler runs inside the faulting instruction's step (its instructions
/// uncounted, a time-stamp read in it unrecorded). #PF, #GP, #UD and #DE; instructions that
/// always raise one (INT3, INT n, UD2) and external interrupts are delivered by the VMM
/// instead. Four breakpoint registers bound the list. Stored in a recording's header
/// (`step_exception_breakpoints`).
pub const WATCHED_EXCEPTIONS: [u8; 4] = [14, 13, 6, 0];

/// Per-run state of the loop (saved in checkpoints: everything here is position state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoopState {
    clock: StepClock,
    halted: bool,
    /// This KVM drops single-step after each step: re-arm before every step.
    rearm: bool,
    /// Where the next step must stop: the entry of the interrupt handler just injected
    /// (interrupt delivery clears the trap flag, so single-step alone would run the whole
    /// handler as one step on such KVMs).
    handler_breakpoint: Option<u64>,
    /// The position at which guest time last skipped ahead while halted.
    skipped_at: Option<Position>,
    /// Interrupt readiness known without a KVM exit (after emulation), else None.
    pub(crate) ready_override: Option<bool>,
    emulated: u64,
    tsc_base: u64,
    /// The last position whose register snapshot went to the driver.
    last_snapshot: Option<Position>,
}

/// The stepped run's state between two calls of the loop: the loop state plus the
/// registers as of the current position.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SteppedState {
    pub(crate) st: LoopState,
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_bindings::kvm_sregs,
    /// Nothing has happened yet at this position (no driver question answered).
    pub(crate) fresh: bool,
    /// The run has ended; it cannot go on.
    pub(crate) ended: bool,
}

impl SteppedState {
    pub(crate) fn now_ns(&self) -> u64 {
        self.st.clock.now_ns()
    }
}

impl std::fmt::Debug for SteppedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteppedState")
            .field("st", &self.st)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("fresh", &self.fresh)
            .finish_non_exhaustive()
    }
}

/// Where a call of `continue_stepped` left the machine.
#[derive(Debug, Clone)]
pub struct SteppedStop {
    /// The guest's end (the run cannot continue), or None if the driver stopped it.
    pub end: Option<RunEnd>,
    pub stop: Option<Stop>,
    pub position: Position,
    /// Digest of registers, memory and devices, computed only when the guest ended.
    pub final_digest: Option<u64>,
}

impl Machine {
    /// Runs the guest one step at a time under `driver` until it ends or the driver stops.
    pub fn run_stepped<D: StepDriver>(
        &mut self,
        driver: &mut D,
        time: TimeConfig,
    ) -> Result<SteppedReport, SteppedError<D::Error>> {
        self.run_stepped_with(driver, time, |_, _| Ok(false))
    }

    /// `run_stepped`, where each `Stop::Reached` from the driver calls `on_reached` with the
    /// machine at that (fresh) position: it returns true to go on (e.g. after taking a
    /// checkpoint), false to end the run there.
    pub fn run_stepped_with<D: StepDriver>(
        &mut self,
        driver: &mut D,
        time: TimeConfig,
        mut on_reached: impl FnMut(&mut Machine, &mut D) -> Result<bool, D::Error>,
    ) -> Result<SteppedReport, SteppedError<D::Error>> {
        let started = Instant::now();
        self.begin_stepped(driver, time)?;
        let out = loop {
            let out = self.continue_stepped(driver)?;
            if out.end.is_none()
                && out.stop == Some(Stop::Reached)
                && on_reached(self, driver).map_err(SteppedError::Driver)?
            {
                continue;
            }
            break out;
        };
        let duration = started.elapsed();
        let final_regs = self.stepped_regs().unwrap_or(RegSnapshot([0; 18]));
        let final_digest = match out.final_digest {
            Some(d) => d,
            None => self.state_digest(&final_regs, out.position),
        };
        let (emulated, guest_ns) = self
            .stepped
            .as_ref()
            .map(|s| (s.st.emulated, s.st.clock.now_ns()))
            .unwrap_or_default();
        Ok(SteppedReport {
            end: out.end,
            stop: out.stop,
            position: out.position,
            final_regs,
            final_digest,
            emulated,
            duration,
            guest_ns,
        })
    }

    /// Boots the stepped run: position 0, nothing executed yet.
    pub fn begin_stepped<D: StepDriver>(
        &mut self,
        driver: &mut D,
        time: TimeConfig,
    ) -> Result<(), SteppedError<D::Error>> {
        let facts = driver.boot().map_err(SteppedError::Driver)?;
        self.boot_wall_clock_ns = facts.wall_clock_ns;
        self.vcpu.enable_sync_regs();
        let semantics = self.probe_step_semantics().map_err(MachineError::from)?;
        self.vcpu
            .set_single_step(true)
            .map_err(MachineError::from)?;
        // The first exit has not happened yet: fetch registers once by ioctl.
        let regs = self.vcpu.regs().map_err(MachineError::from)?;
        let sregs = self.vcpu.sregs().map_err(MachineError::from)?;
        self.stepped = Some(SteppedState {
            st: LoopState {
                clock: StepClock {
                    ns_per_step: time.ns_per_step,
                    ..StepClock::default()
                },
                halted: false,
                rearm: semantics.rearm_each_step,
                handler_breakpoint: None,
                skipped_at: None,
                ready_override: Some(regs.rflags & RFLAGS_IF != 0),
                emulated: 0,
                tsc_base: facts.tsc_base,
                last_snapshot: None,
            },
            regs,
            sregs,
            fresh: true,
            ended: false,
        });
        self.position = 0;
        self.now_ns = 0;
        Ok(())
    }

    /// The registers of the stepped run at its current position.
    pub fn stepped_regs(&self) -> Option<RegSnapshot> {
        self.stepped
            .as_ref()
            .map(|s| RegSnapshot::from_regs(&s.regs))
    }

    /// The full general registers of the stepped run at its current position.
    pub fn stepped_kvm_regs(&self) -> Option<&kvm_regs> {
        self.stepped.as_ref().map(|s| &s.regs)
    }

    /// The special registers of the stepped run at its current position.
    pub fn stepped_sregs(&self) -> Option<&kvm_bindings::kvm_sregs> {
        self.stepped.as_ref().map(|s| &s.sregs)
    }

    /// Whether nothing has happened yet at the current position (the driver has not been
    /// asked anything there): the only points where checkpoints are taken and seeks stop.
    pub fn at_fresh_position(&self) -> bool {
        self.stepped.as_ref().is_some_and(|s| s.fresh)
    }

    /// Whether the stepped run has ended (the guest exited, faulted or halted for good).
    pub fn stepped_ended(&self) -> bool {
        self.stepped.as_ref().is_some_and(|s| s.ended)
    }

    /// Continues the stepped run (after `begin_stepped` or a restore) until the guest ends
    /// or the driver stops it. A stop from `boundary` at a fresh position leaves the
    /// machine exactly before that position, to be continued or checkpointed.
    pub fn continue_stepped<D: StepDriver>(
        &mut self,
        driver: &mut D,
    ) -> Result<SteppedStop, SteppedError<D::Error>> {
        let Some(saved) = self.stepped.clone() else {
            return Err(MachineError::UnexpectedExit(
                "continue_stepped before begin_stepped".to_string(),
            )
            .into());
        };
        if saved.ended {
            return Ok(SteppedStop {
                end: None,
                stop: Some(Stop::Reached),
                position: saved.st.clock.pos,
                final_digest: None,
            });
        }
        let SteppedState {
            mut st,
            mut regs,
            mut sregs,
            mut fresh,
            ..
        } = saved;
        let (end, stop) = loop {
            let pos = st.clock.pos;
            self.position = pos;
            self.now_ns = st.clock.now_ns();
            self.stepped = Some(SteppedState {
                st: st.clone(),
                regs,
                sregs,
                fresh,
                ended: false,
            });
            if let Some(stop) = driver.boundary(pos, self).map_err(SteppedError::Driver)? {
                break (None, Some(stop));
            }
            fresh = false;
            if pos.is_multiple_of(DIGEST_INTERVAL) && st.last_snapshot != Some(pos) {
                st.last_snapshot = Some(pos);
                driver
                    .snapshot(pos, &RegSnapshot::from_regs(&regs))
                    .map_err(SteppedError::Driver)?;
            }
            // Serial input may arrive at a position only before guest time skipped there,
            // so record and replay agree on the order of the two.
            let may_receive = st.skipped_at != Some(pos);
            self.stepped_inputs(driver, pos, may_receive)?;
            if let Some(end) = self.take_pending_end()? {
                break (Some(end), None);
            }
            // A halted guest: if nothing is pending, time moves to the next deadline (the
            // live driver may wait for the host clock or for input first). Input, skip and
            // injection decision happen in this order within one pass, whatever the number
            // of passes the live host needs, so record and replay see the same sequence.
            if st.halted {
                match self
                    .idle_while_halted(driver, pos, &regs, may_receive)
                    .map_err(SteppedError::Driver)?
                {
                    Halted::End(end) => break (Some(end), None),
                    Halted::Again => continue,
                    Halted::SkipTo(deadline) => {
                        st.clock.skip_to(deadline);
                        st.skipped_at = Some(pos);
                        self.now_ns = st.clock.now_ns();
                        self.poll_timers();
                    }
                    Halted::Wake => {}
                }
            }
            let pending = self.devices.pic.has_pending();
            let ready = match (st.halted, st.ready_override) {
                (true, _) => regs.rflags & RFLAGS_IF != 0,
                (false, Some(r)) => r,
                (false, None) => self.vcpu.ready_for_interrupt(),
            };
            let mut injected = false;
            let mut delivered_by_vmm = false;
            if driver
                .inject_now(pos, pending, ready, st.halted)
                .map_err(SteppedError::Driver)?
            {
                injected = true;
                let vector = self.devices.pic.acknowledge();
                // Where single-step is the guest's trap flag, interrupt delivery clears it
                // and KVM would run the whole handler as one step: the VMM delivers it
                // itself (the delivery is the step), or else stops at the handler's entry
                // with a breakpoint where it cannot.
                delivered_by_vmm = st.rearm && self.deliver_by_vmm(vector)?;
                if !delivered_by_vmm {
                    self.vcpu.inject(vector).map_err(MachineError::from)?;
                    if st.rearm {
                        st.handler_breakpoint = self.interrupt_handler(&sregs, vector);
                    }
                }
                self.stats.interrupts_injected += 1;
                driver.injected(pos, vector).map_err(SteppedError::Driver)?;
                tracing::trace!(pos, vector, halted = st.halted, "interrupt injected");
                st.halted = false;
            }
            if st.halted {
                continue;
            }
            // Decode the next instruction: emulate it, or let KVM step it. Right after an
            // injection KVM must run: the interrupt is delivered before that instruction.
            let mmu = Mmu::from_sregs(&sregs);
            let next = if injected {
                None
            } else {
                self.next_instruction(&mmu, &regs, &sregs, pos)?
            };
            let delivered = match next {
                _ if delivered_by_vmm => Some(StepOutcome::ExecutedByVmm),
                Some((Emulated::RaisesInterrupt, _)) => self.execute_interrupting_instruction()?,
                Some((emulated, len)) => {
                    self.emulate(driver, &mut st, &mut regs, emulated, len)?;
                    fresh = true;
                    continue;
                }
                None => None,
            };
            let outcome = match delivered {
                Some(outcome) => outcome,
                None => {
                    if sregs.cs.dpl == 3 && !self.step_semantics.is_none_or(|s| s.user_mode) {
                        return Err(MachineError::UserModeNotSteppable {
                            rip: regs.rip,
                            position: pos,
                        }
                        .into());
                    }
                    if st.rearm {
                        let breakpoints = match st.handler_breakpoint.take() {
                            Some(entry) => ExecBreakpoints::at(entry),
                            None if self
                                .step_semantics
                                .is_some_and(|s| s.exception_breakpoints) =>
                            {
                                self.exception_breakpoints(&sregs, regs.rip)
                            }
                            None => ExecBreakpoints::NONE,
                        };
                        self.vcpu
                            .set_guest_debug(true, breakpoints)
                            .map_err(MachineError::from)?;
                    }
                    self.step_once(&st.clock)?
                }
            };
            match outcome {
                StepOutcome::Ended(end) => break (Some(end), None),
                StepOutcome::Stepped => {
                    st.clock.pos += 1;
                    st.ready_override = None;
                    fresh = true;
                    regs = self.vcpu.synced_regs();
                    sregs = self.vcpu.synced_sregs();
                }
                StepOutcome::ExecutedByVmm => {
                    st.clock.pos += 1;
                    fresh = true;
                    regs = self.vcpu.regs().map_err(MachineError::from)?;
                    sregs = self.vcpu.sregs().map_err(MachineError::from)?;
                    st.ready_override = Some(regs.rflags & RFLAGS_IF != 0);
                }
            }
        };
        let pos = st.clock.pos;
        self.position = pos;
        let ended = end.is_some();
        self.stepped = Some(SteppedState {
            st,
            regs,
            sregs,
            fresh: fresh && !ended,
            ended,
        });
        let mut final_digest = None;
        if let Some(end) = &end {
            let final_regs = RegSnapshot::from_regs(&regs);
            let digest = self.state_digest(&final_regs, pos);
            final_digest = Some(digest);
            driver
                .end(pos, end, &final_regs, digest)
                .map_err(SteppedError::Driver)?;
        }
        Ok(SteppedStop {
            end,
            stop,
            position: pos,
            final_digest,
        })
    }

    /// A digest of the whole machine: registers at `pos`, all of RAM, every device.
    pub fn state_digest(&self, regs: &RegSnapshot, pos: Position) -> u64 {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mut crc = crc32fast::Hasher::new();
        for region in self.mem.iter() {
            let len = region.len() as usize;
            if let Ok(slice) = region.get_slice(vm_memory::MemoryRegionAddress(0), len) {
                let mut buf = vec![0u8; 1 << 20];
                let mut offset = 0;
                while offset < len {
                    let n = buf.len().min(len - offset);
                    if let Ok(sub) = slice.subslice(offset, n) {
                        sub.copy_to(&mut buf[..n]);
                        crc.update(&buf[..n]);
                    }
                    offset += n;
                }
            }
        }
        if let Ok(devices) = serde_json::to_vec(&self.devices.state()) {
            crc.update(&devices);
        }
        regs.digest(pos) ^ (u64::from(crc.finalize()) << 32)
    }

    fn take_pending_end<E: std::error::Error>(
        &mut self,
    ) -> Result<Option<RunEnd>, SteppedError<E>> {
        if let Some(e) = self.devices.serial.take_output_error() {
            return Err(MachineError::from(e).into());
        }
        Ok(self.pending_end.take())
    }

    /// Timer interrupts due at the current guest time.
    pub(crate) fn poll_timers(&mut self) {
        let mut ctx = DeviceCtx::new(self.now_ns, self.boot_wall_clock_ns);
        self.devices.poll_timers(&mut ctx);
        self.apply(ctx, |_| 0);
    }

    /// What a halted guest does at position `pos` (registers `regs`), the same for both
    /// clocks: it cannot wake with interrupts off; it wakes if an interrupt is pending;
    /// otherwise the driver may wait for the host clock or for input (then the position is
    /// looked at again), or guest time skips to the next timer deadline; with no deadline
    /// and no input possible, nothing can ever wake it.
    pub(crate) fn idle_while_halted<D: StepDriver>(
        &mut self,
        driver: &mut D,
        pos: Position,
        regs: &kvm_regs,
        may_receive: bool,
    ) -> Result<Halted, D::Error> {
        if regs.rflags & RFLAGS_IF == 0 {
            return Ok(Halted::End(halted_end(regs, false)));
        }
        if self.devices.pic.has_pending() {
            return Ok(Halted::Wake);
        }
        let serial = &self.devices.serial;
        let can_receive = may_receive && !serial.is_hung_up() && serial.rx_room() > 0;
        Ok(match self.devices.next_timer_deadline_ns() {
            Some(deadline) if driver.idle(pos, deadline, can_receive)? => Halted::Again,
            Some(deadline) => Halted::SkipTo(deadline),
            None if !can_receive => Halted::End(halted_end(regs, true)),
            None => {
                driver.wait_for_input(pos)?;
                Halted::Again
            }
        })
    }

    /// Serial input (if `may_receive`) and timers at the current position.
    pub(crate) fn stepped_inputs<D: StepDriver>(
        &mut self,
        driver: &mut D,
        pos: Position,
        may_receive: bool,
    ) -> Result<(), SteppedError<D::Error>> {
        let mut ctx = DeviceCtx::new(self.now_ns, self.boot_wall_clock_ns);
        let serial = &mut self.devices.serial;
        if may_receive && !serial.is_hung_up() {
            match driver
                .serial(pos, serial.rx_room())
                .map_err(SteppedError::Driver)?
            {
                SerialPoll::Bytes(bytes) => {
                    serial.receive(&bytes, &mut ctx);
                }
                SerialPoll::Ended => serial.hang_up(),
                SerialPoll::Nothing => {}
            }
        }
        self.devices.poll_timers(&mut ctx);
        self.apply(ctx, |_| 0);
        Ok(())
    }

    /// Breakpoints at the entries of the handlers of [`WATCHED_EXCEPTIONS`] (as the guest's
    /// IDT has them now), except one at `rip` itself (the step would stop before running
    /// anything: an execution breakpoint fires again at the same RIP).
    fn exception_breakpoints(&self, sregs: &kvm_bindings::kvm_sregs, rip: u64) -> ExecBreakpoints {
        let mut breakpoints = ExecBreakpoints::NONE;
        for vector in WATCHED_EXCEPTIONS {
            if let Some(entry) = self.interrupt_handler(sregs, vector) {
                if entry != rip {
                    breakpoints.push(entry);
                }
            }
        }
        breakpoints
    }

    /// Delivers external interrupt `vector` by the VMM; false if it cannot here.
    fn deliver_by_vmm(&mut self, vector: u8) -> Result<bool, MachineError> {
        match self.deliver_external_interrupt(vector)? {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!(vector, error = %e, "interrupt left to KVM");
                Ok(false)
            }
        }
    }

    /// An instruction that raises an interrupt (INT3, INT n, UD2...) on a KVM that steps
    /// with the trap flag: executed by the VMM, which delivers through the guest's IDT, so
    /// that the handler's first instruction is the next step.
    /// None if the VMM cannot deliver it (then KVM steps it, the handler unseen).
    fn execute_interrupting_instruction(&mut self) -> Result<Option<StepOutcome>, MachineError> {
        match self.execute_unemulated()? {
            Ok(_) => Ok(Some(StepOutcome::ExecutedByVmm)),
            Err(e) => {
                tracing::debug!(error = %e, "interrupting instruction left to KVM");
                Ok(None)
            }
        }
    }

    /// The linear address of the guest's handler for `vector`, read from its IDT (long
    /// mode 16-byte gates, protected mode 8-byte gates with a flat code segment, real-mode
    /// IVT). None if the IDT does not cover the vector.
    fn interrupt_handler(&self, sregs: &kvm_bindings::kvm_sregs, vector: u8) -> Option<u64> {
        let mmu = Mmu::from_sregs(sregs);
        let v = u64::from(vector);
        if sregs.cr0 & 1 == 0 {
            let mut e = [0u8; 4];
            (mmu.read_virt(&self.mem, sregs.idt.base + v * 4, &mut e) == 4).then(|| {
                let off = u64::from(u16::from_le_bytes([e[0], e[1]]));
                let seg = u64::from(u16::from_le_bytes([e[2], e[3]]));
                seg * 16 + off
            })
        } else if mmu.long_mode() {
            let mut e = [0u8; 16];
            if v * 16 + 15 > u64::from(sregs.idt.limit)
                || mmu.read_virt(&self.mem, sregs.idt.base + v * 16, &mut e) != 16
            {
                return None;
            }
            let low = u64::from(u16::from_le_bytes([e[0], e[1]]));
            let mid = u64::from(u16::from_le_bytes([e[6], e[7]]));
            let high = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
            Some(low | (mid << 16) | (high << 32))
        } else {
            let mut e = [0u8; 8];
            if v * 8 + 7 > u64::from(sregs.idt.limit)
                || mmu.read_virt(&self.mem, sregs.idt.base + v * 8, &mut e) != 8
            {
                return None;
            }
            let low = u64::from(u16::from_le_bytes([e[0], e[1]]));
            let high = u64::from(u16::from_le_bytes([e[6], e[7]]));
            Some(low | (high << 16))
        }
    }

    /// One KVM single step, handling the device exits inside it.
    fn step_once(&mut self, clock: &StepClock) -> Result<StepOutcome, MachineError> {
        loop {
            let exit = self.vcpu.run()?;
            self.now_ns = clock.now_ns();
            match exit {
                Exit::Debug { .. } => return Ok(StepOutcome::Stepped),
                Exit::Interrupted => continue,
                // A KVM that halts instead of stepping over a HLT we failed to decode: the
                // step is over.
                Exit::Hlt => {
                    self.stats.hlt_exits += 1;
                    return Ok(StepOutcome::Stepped);
                }
                other => {
                    let next = self.handle_exit(other)?;
                    if let Some(end) = self.pending_end.take() {
                        return Ok(StepOutcome::Ended(end));
                    }
                    // The instruction KVM could not run is the step.
                    if next == Next::ExecutedByVmm {
                        return Ok(StepOutcome::ExecutedByVmm);
                    }
                }
            }
        }
    }
}

const RFLAGS_IF: u64 = 1 << 9;

/// How one KVM single step ended.
enum StepOutcome {
    /// KVM stepped; the registers are in `kvm_run`'s sync area.
    Stepped,
    /// KVM could not emulate the instruction; the VMM executed it (registers by ioctl).
    ExecutedByVmm,
    Ended(RunEnd),
}

/// What [`Machine::idle_while_halted`] decided.
pub(crate) enum Halted {
    /// Nothing can ever wake the guest.
    End(RunEnd),
    /// Input may have arrived, or the driver waited: look at the position again.
    Again,
    /// Skip guest time to this deadline (then poll the timers).
    SkipTo(u64),
    /// An interrupt is pending: go on to the injection decision.
    Wake,
}

fn halted_end(regs: &kvm_regs, interrupts_enabled: bool) -> RunEnd {
    RunEnd::HaltedForGood {
        rip: regs.rip.wrapping_sub(1),
        interrupts_enabled,
    }
}

impl Machine {
    /// Benchmark baseline: `steps` bare single steps (device exits handled, nothing
    /// decoded, emulated or asked of a driver). Returns the steps done before the guest
    /// ended or `steps` was reached.
    pub fn raw_single_steps(&mut self, steps: u64) -> Result<u64, MachineError> {
        self.vcpu.set_single_step(true)?;
        let mut done = 0;
        while done < steps {
            match self.vcpu.run()? {
                Exit::Debug { .. } | Exit::Hlt => done += 1,
                Exit::Interrupted => {}
                other => {
                    self.handle_exit(other)?;
                    if self.pending_end.take().is_some() {
                        break;
                    }
                }
            }
        }
        Ok(done)
    }
}
