//! The gdbstub target: a replayed trace on a timeline, with registers and memory of the
//! current position, forward and reverse execution, and breakpoints/watchpoints evaluated
//! by ttvm (see `watch`).
//!
//! Writes to registers or memory are refused: the replay must follow its recording, and a
//! changed value would make it diverge at once. The refusal is printed on ttvm's stderr.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;

use gdbstub::common::Signal;
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ttvm_logs::output_index::OUTPUT_INDEX_FILE;
use ttvm_replayer::output::{load_or_build, OutputError, OutputIndex};
use ttvm_replayer::timeline::{Arrival, Timeline, TimelineError};
use ttvm_vmm::machine::elf_image::ElfClass;
use ttvm_vmm::machine::paging::Mmu;
use ttvm_vmm::Machine;

use crate::arch::{target_xml, TtvmRegs, TtvmX86};
use crate::watch::{Hit, StopPoints, Watchpoint};

pub type StopReason = SingleThreadStopReason<u64>;

#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("reading the vCPU failed: {0}")]
    Vcpu(String),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// What gdb asked for with its last resume packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    Continue,
    Step,
    ReverseStep,
    ReverseContinue,
}

/// What executing a resume request produced.
pub enum Outcome {
    Stopped(StopReason),
    /// gdb sent data (Ctrl-C) while the replay ran: it stopped, the byte waits.
    Incoming,
}

/// How often (in positions) a forward run looks for a Ctrl-C from gdb.
const POLL_EVERY: u64 = 2048;

pub struct DebugTarget {
    pub(crate) timeline: Timeline,
    points: StopPoints,
    resume: Option<Resume>,
    /// The gdb connection, polled for Ctrl-C during long forward runs.
    pub(crate) conn_fd: Option<RawFd>,
    /// Registers in the x86-64 layout (ELF64 guest) or the i386 one (ELF32 guest).
    wide: bool,
    /// The target description gdb reads for that layout.
    description: String,
    /// The guest's serial output by position, built on first use.
    output: Option<OutputIndex>,
}

fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; a zero timeout
    // never blocks. An fd that was closed only makes poll report POLLNVAL.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

impl DebugTarget {
    pub fn new(timeline: Timeline) -> Self {
        // gdb takes the architecture from the ELF it loads: serve registers to match.
        let wide = timeline.machine().image().class == ElfClass::Elf64;
        DebugTarget {
            timeline,
            points: StopPoints::default(),
            resume: None,
            conn_fd: None,
            wide,
            description: target_xml(wide),
            output: None,
        }
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub fn timeline_mut(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// The output index of the trace (built by one replay the first time, then cached).
    pub fn output_index(&mut self) -> Result<&OutputIndex, GdbError> {
        let index = match self.output.take() {
            Some(index) => index,
            None => {
                let trace = self.timeline.trace_dir().to_path_buf();
                let stop = Arc::new(AtomicBool::new(false));
                load_or_build(&trace, false, stop, || {
                    eprintln!(
                        "ttvm: indexing the guest's serial output (one replay of the whole \
                         trace; cached in {})",
                        trace.join(OUTPUT_INDEX_FILE).display()
                    );
                })?
            }
        };
        Ok(self.output.insert(index))
    }

    fn machine(&self) -> &Machine {
        self.timeline.machine()
    }

    fn at_end(&self) -> bool {
        self.machine().stepped_ended()
    }

    /// Runs what the last resume packet asked for.
    pub fn execute(&mut self) -> Result<Outcome, GdbError> {
        let resume = self.resume.take().unwrap_or(Resume::Step);
        let stop = match resume {
            Resume::Step => self.step()?,
            Resume::ReverseStep => self.reverse_step()?,
            Resume::ReverseContinue => self.reverse_continue()?,
            Resume::Continue => return self.forward_continue(),
        };
        Ok(Outcome::Stopped(stop))
    }

    fn end_of_history(pos: ReplayLogPosition) -> StopReason {
        StopReason::ReplayLog { tid: None, pos }
    }

    fn hit_reason(hit: Hit) -> StopReason {
        match hit {
            Hit::Breakpoint => StopReason::SwBreak(()),
            Hit::Watch { kind, addr } => StopReason::Watch {
                tid: (),
                kind,
                addr,
            },
        }
    }

    fn step(&mut self) -> Result<StopReason, GdbError> {
        if self.at_end() {
            return Ok(Self::end_of_history(ReplayLogPosition::End));
        }
        let watched = self.points.watch_hit(self.machine());
        let pos = self.timeline.position();
        // Forward execution: the step's serial output shows (a seek would not).
        let arrival = self
            .timeline
            .run_forward(Box::new(|_, _| false), Some(pos + 1))?;
        Ok(match arrival {
            Arrival::Target | Arrival::Watch => match watched {
                Some(hit) => Self::hit_reason(hit),
                None => StopReason::DoneStep,
            },
            Arrival::Interrupted => StopReason::Signal(Signal::SIGINT),
            Arrival::End(_) | Arrival::TraceStops => Self::end_of_history(ReplayLogPosition::End),
        })
    }

    fn reverse_step(&mut self) -> Result<StopReason, GdbError> {
        let pos = self.timeline.position();
        let target = if self.at_end() {
            pos
        } else if pos == 0 {
            return Ok(Self::end_of_history(ReplayLogPosition::Begin));
        } else {
            pos - 1
        };
        self.timeline.seek(target)?;
        Ok(match self.points.watch_hit(self.machine()) {
            Some(hit) => Self::hit_reason(hit),
            None => StopReason::DoneStep,
        })
    }

    fn reverse_continue(&mut self) -> Result<StopReason, GdbError> {
        let pos = self.timeline.position();
        // At the very end the last instruction (the one that ended the guest) counts too.
        let before = if self.at_end() { pos + 1 } else { pos };
        let points = self.points.clone();
        let probe = Rc::new(std::cell::RefCell::new(move |_p, m: &Machine| {
            points.breakpoint_at(m) || points.watch_hit(m).is_some()
        }));
        let found = if self.points.is_empty() {
            None
        } else {
            self.timeline.find_last(before, probe)?
        };
        match found {
            Some(p) => {
                self.timeline.seek(p)?;
                let m = self.machine();
                let hit = if self.points.breakpoint_at(m) {
                    Hit::Breakpoint
                } else {
                    self.points.watch_hit(m).unwrap_or(Hit::Breakpoint)
                };
                Ok(Self::hit_reason(hit))
            }
            None => {
                self.timeline.seek(0)?;
                Ok(Self::end_of_history(ReplayLogPosition::Begin))
            }
        }
    }

    fn forward_continue(&mut self) -> Result<Outcome, GdbError> {
        if self.at_end() {
            return Ok(Outcome::Stopped(Self::end_of_history(
                ReplayLogPosition::End,
            )));
        }
        let points = self.points.clone();
        let hit = Rc::new(Cell::new(None::<Hit>));
        let interrupted = Rc::new(Cell::new(false));
        // The access of the instruction at the start position shows after it runs.
        let mut pending = points.watch_hit(self.machine());
        let (hit_out, int_out, fd) = (hit.clone(), interrupted.clone(), self.conn_fd);
        let mut count = 0u64;
        let watch = Box::new(move |_pos, m: &Machine| {
            if let Some(h) = pending.take() {
                hit_out.set(Some(h));
                return true;
            }
            if points.breakpoint_at(m) {
                hit_out.set(Some(Hit::Breakpoint));
                return true;
            }
            pending = points.watch_hit(m);
            count += 1;
            if count.is_multiple_of(POLL_EVERY) && fd.is_some_and(readable) {
                int_out.set(true);
                return true;
            }
            false
        });
        let arrival = self.timeline.run_forward(watch, None)?;
        Ok(match arrival {
            Arrival::Watch if interrupted.get() => Outcome::Incoming,
            Arrival::Watch => {
                Outcome::Stopped(Self::hit_reason(hit.get().unwrap_or(Hit::Breakpoint)))
            }
            Arrival::Interrupted => Outcome::Stopped(StopReason::Signal(Signal::SIGINT)),
            Arrival::Target | Arrival::End(_) | Arrival::TraceStops => {
                Outcome::Stopped(Self::end_of_history(ReplayLogPosition::End))
            }
        })
    }

    fn refuse(what: &str) {
        eprintln!(
            "ttvm: refusing to write {what}: a replay must follow its recording (a changed \
             value would make it diverge)"
        );
    }
}

impl Target for DebugTarget {
    type Arch = TtvmX86;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl TargetDescriptionXmlOverride for DebugTarget {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let xml = self.description.as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
        let n = length.min(buf.len()).min(xml.len() - start);
        buf[..n].copy_from_slice(&xml[start..start + n]);
        Ok(n)
    }
}

impl SingleThreadBase for DebugTarget {
    fn read_registers(&mut self, regs: &mut TtvmRegs) -> TargetResult<(), Self> {
        let m = self.timeline.machine();
        let (Some(r), Some(s)) = (m.stepped_kvm_regs(), m.stepped_sregs()) else {
            return Err(TargetError::NonFatal);
        };
        regs.wide = self.wide;
        regs.gprs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        regs.segments = [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|seg| u32::from(seg.selector));
        regs.fs_base = s.fs.base;
        regs.gs_base = s.gs.base;
        regs.system = [s.cr0, s.cr2, s.cr3, s.cr4, s.efer];
        let fpu = m
            .fpu()
            .map_err(|e| TargetError::Fatal(GdbError::Vcpu(e.to_string())))?;
        for (dst, src) in regs.st.iter_mut().zip(fpu.fpr.iter()) {
            dst.copy_from_slice(&src[..10]);
        }
        // gdb wants the full tag word; KVM keeps the abridged one (1 = valid).
        let mut ftag = 0u32;
        for i in 0..8 {
            if fpu.ftwx & (1 << i) == 0 {
                ftag |= 0b11 << (2 * i);
            }
        }
        regs.x87 = [
            u32::from(fpu.fcw),
            u32::from(fpu.fsw),
            ftag,
            0,
            fpu.last_ip as u32,
            0,
            fpu.last_dp as u32,
            u32::from(fpu.last_opcode),
        ];
        for (dst, src) in regs.xmm.iter_mut().zip(fpu.xmm.iter()) {
            *dst = u128::from_le_bytes(*src);
        }
        regs.mxcsr = fpu.mxcsr;
        Ok(())
    }

    fn write_registers(&mut self, _regs: &TtvmRegs) -> TargetResult<(), Self> {
        Self::refuse("registers");
        Err(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start_addr: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let m = self.timeline.machine();
        let Some(sregs) = m.stepped_sregs() else {
            return Err(TargetError::NonFatal);
        };
        let n = Mmu::from_sregs(sregs).read_virt(m.memory(), start_addr, data);
        if n == 0 && !data.is_empty() {
            // EFAULT: gdb says "Cannot access memory at address ...".
            return Err(TargetError::Errno(14));
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start_addr: u64, _data: &[u8]) -> TargetResult<(), Self> {
        Self::refuse(&format!("memory at {start_addr:#x}"));
        Err(TargetError::Errno(1))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for DebugTarget {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), GdbError> {
        if signal.is_some() {
            tracing::debug!(
                ?signal,
                "gdb asked to deliver a signal: ignored in a replay"
            );
        }
        self.resume = Some(Resume::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for DebugTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), GdbError> {
        self.resume = Some(Resume::Step);
        Ok(())
    }
}

impl ReverseStep<()> for DebugTarget {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), GdbError> {
        self.resume = Some(Resume::ReverseStep);
        Ok(())
    }
}

impl ReverseCont<()> for DebugTarget {
    fn reverse_cont(&mut self) -> Result<(), GdbError> {
        self.resume = Some(Resume::ReverseContinue);
        Ok(())
    }
}

impl Breakpoints for DebugTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for DebugTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.points.breakpoints.insert(addr);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.points.breakpoints.remove(&addr))
    }
}

impl HwBreakpoint for DebugTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.points.breakpoints.insert(addr);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.points.breakpoints.remove(&addr))
    }
}

impl HwWatchpoint for DebugTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.points.watchpoints.push(Watchpoint { addr, len, kind });
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let w = Watchpoint { addr, len, kind };
        match self.points.watchpoints.iter().position(|x| *x == w) {
            Some(i) => {
                self.points.watchpoints.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
