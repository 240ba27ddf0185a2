//! The live driver: the stepped loop's outside world answered by the real host, without
//! logging. `ttvm run --clock singlestep` uses it directly; the recorder wraps it and logs
//! every answer.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::machine::digest::RegSnapshot;
use crate::machine::Machine;
use crate::run::end::RunEnd;
use crate::run::inputs::{HostInputs, RealHost, SerialPoll, SerialSource};
use crate::run::singlestep::{BootFacts, HostValueKind, Position, StepDriver, Stop};

pub struct LiveDriver {
    host: RealHost,
    stop_requested: Arc<AtomicBool>,
}

impl LiveDriver {
    pub fn new(serial: SerialSource) -> Self {
        LiveDriver {
            host: RealHost::new(serial),
            stop_requested: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Host nanoseconds since the machine started (the scale of guest deadlines).
    pub fn host_ns(&mut self) -> u64 {
        self.host.now_ns()
    }

    /// Lets host input (serial bytes) kick the vCPU out of a free run.
    pub fn set_kick(&mut self, kick: crate::run::kick::KickHandle) {
        self.host.set_kick(kick);
    }

    /// A flag that, once set (e.g. by a Ctrl-C handler), stops the run at the next step.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop_requested.clone()
    }
}

/// A random 64-bit value from the kernel (what RDRAND would have given).
pub fn host_random() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom on a live kernel does not fail for 8 bytes; fall back to time.
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
    }
    u64::from_le_bytes(buf)
}

/// The host's TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl StepDriver for LiveDriver {
    type Error = Infallible;

    fn boot(&mut self) -> Result<BootFacts, Infallible> {
        Ok(BootFacts {
            wall_clock_ns: self.host.boot_wall_clock_ns(),
            tsc_base: host_tsc(),
        })
    }

    fn boundary(&mut self, _pos: Position, _m: &Machine) -> Result<Option<Stop>, Infallible> {
        Ok(self
            .stop_requested
            .load(Ordering::Relaxed)
            .then_some(Stop::Interrupted))
    }

    fn serial(&mut self, _pos: Position, room: usize) -> Result<SerialPoll, Infallible> {
        if room == 0 {
            return Ok(SerialPoll::Nothing);
        }
        Ok(self.host.poll_serial(room))
    }

    fn inject_now(
        &mut self,
        _pos: Position,
        pending: bool,
        ready: bool,
        _halted: bool,
    ) -> Result<bool, Infallible> {
        Ok(pending && ready)
    }

    fn injected(&mut self, _pos: Position, _vector: u8) -> Result<(), Infallible> {
        Ok(())
    }

    fn host_value(
        &mut self,
        _pos: Position,
        kind: HostValueKind,
        virtual_value: u64,
    ) -> Result<(u64, bool), Infallible> {
        Ok(match kind {
            HostValueKind::Rdtsc | HostValueKind::Rdtscp => (virtual_value, true),
            HostValueKind::Rdrand | HostValueKind::Rdseed => (host_random(), true),
        })
    }

    fn snapshot(&mut self, _pos: Position, _regs: &RegSnapshot) -> Result<(), Infallible> {
        Ok(())
    }

    fn wait_for_input(&mut self, _pos: Position) -> Result<(), Infallible> {
        self.host.wait(None);
        Ok(())
    }

    fn idle(
        &mut self,
        _pos: Position,
        deadline_ns: u64,
        can_receive: bool,
    ) -> Result<bool, Infallible> {
        // Guest time starts with the host's: sleep until the host catches up with the
        // deadline, or (if the guest could take it) until input arrives.
        let now = self.host.now_ns();
        if deadline_ns <= now {
            return Ok(false);
        }
        if !can_receive {
            std::thread::sleep(std::time::Duration::from_nanos(deadline_ns - now));
            return Ok(false);
        }
        Ok(self.host.wait_until(deadline_ns))
    }

    fn end(
        &mut self,
        _pos: Position,
        _end: &RunEnd,
        _regs: &RegSnapshot,
        _digest: u64,
    ) -> Result<(), Infallible> {
        Ok(())
    }
}
