//! The real branch counter: perf_event_open on the vCPU thread, counting the vendor's
//! retired-conditional-branch event in guest mode only (exclude_host), with an overflow
//! that interrupts KVM_RUN.
//!
//! The overflow is delivered as the vCPU kick signal (see [`crate::run::kick`]) to this very
//! thread: O_ASYNC + F_SETSIG + F_SETOWN_EX(F_OWNER_TID). The handler is installed without
//! SA_RESTART, so KVM_RUN returns EINTR. The count itself is cumulative (perf never resets
//! it on overflow); the sample period only decides when the next signal comes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use perf_event_open_sys::bindings::{
    self as perf_bindings, perf_event_attr, PERF_FLAG_FD_CLOEXEC, PERF_TYPE_RAW,
};

use super::probe::BranchEvent;
use crate::run::kick;

// fcntl(2) commands and types the libc crate does not export (asm-generic/fcntl.h).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// A period so long that no overflow comes: how "disarmed" is expressed.
const NEVER: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("opening the guest branch counter failed: {0}")]
    Open(String),
    #[error("setting up the counter's overflow signal failed ({what}): {source}")]
    Signal {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the counter's overflow signal handler: {0}")]
    Handler(#[from] kick::KickError),
    #[error("perf ioctl {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("reading the branch counter failed: {0}")]
    Read(std::io::Error),
}

/// A guest-only retired-conditional-branch counter on the calling thread.
pub struct PerfBranchCounter {
    fd: OwnedFd,
    event: BranchEvent,
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl PerfBranchCounter {
    /// Opens and enables the counter on the calling thread (which must be the vCPU's).
    pub fn open(event: &BranchEvent) -> Result<Self, PerfError> {
        let mut attr = perf_event_attr {
            type_: PERF_TYPE_RAW,
            size: std::mem::size_of::<perf_event_attr>() as u32,
            config: event.config,
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = NEVER;
        attr.__bindgen_anon_2.wakeup_events = 1;
        attr.set_disabled(1);
        attr.set_pinned(1);
        attr.set_exclude_host(1);
        attr.set_exclude_hv(1);
        // SAFETY: `attr` is a fully initialised perf_event_attr; pid 0 / cpu -1 counts the
        // calling thread wherever it runs; the fd is owned below.
        let raw = unsafe {
            perf_event_open_sys::perf_event_open(&mut attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC as _)
        };
        if raw < 0 {
            let errno = last_error().raw_os_error().unwrap_or(0);
            return Err(PerfError::Open(super::probe::explain(errno)));
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let counter = PerfBranchCounter {
            fd,
            event: event.clone(),
        };
        counter.route_overflow_to_this_thread()?;
        counter.enable()?;
        Ok(counter)
    }

    pub fn event(&self) -> &BranchEvent {
        &self.event
    }

    fn route_overflow_to_this_thread(&self) -> Result<(), PerfError> {
        kick::install_handler()?;
        let fd = self.fd.as_raw_fd();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        let owner = FOwnerEx {
            kind: F_OWNER_TID,
            pid: tid,
        };
        // SAFETY: fcntl on a descriptor we own, with arguments of the types each command
        // expects (a flag word, a signal number, a pointer to a live f_owner_ex).
        unsafe {
            if libc::fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx) != 0 {
                return Err(PerfError::Signal {
                    what: "F_SETOWN_EX",
                    source: last_error(),
                });
            }
            if libc::fcntl(fd, F_SETSIG, kick::kick_signal()) != 0 {
                return Err(PerfError::Signal {
                    what: "F_SETSIG",
                    source: last_error(),
                });
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) != 0 {
                return Err(PerfError::Signal {
                    what: "O_ASYNC",
                    source: last_error(),
                });
            }
        }
        Ok(())
    }

    fn enable(&self) -> Result<(), PerfError> {
        // SAFETY: PERF_EVENT_IOC_ENABLE on a perf fd we own; its argument is ignored.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), perf_bindings::ENABLE as _, 0) } < 0 {
            return Err(PerfError::Ioctl {
                what: "ENABLE",
                source: last_error(),
            });
        }
        Ok(())
    }

    fn set_period(&self, period: u64) -> Result<(), PerfError> {
        let period = period.max(1);
        // SAFETY: PERF_EVENT_IOC_PERIOD reads a u64 through the pointer, which lives for
        // the call. (perf-event-open-sys's wrapper passes the value, not a pointer.) Since
        // Linux 3.14 the new period applies at once: the countdown restarts from now.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                perf_bindings::PERIOD as _,
                &period as *const u64,
            )
        };
        if ret < 0 {
            return Err(PerfError::Ioctl {
                what: "PERIOD",
                source: last_error(),
            });
        }
        Ok(())
    }

    /// Branches counted so far.
    pub fn read(&self) -> Result<u64, PerfError> {
        let mut value = 0u64;
        // SAFETY: reading 8 bytes into a live u64 from a perf fd without read_format flags,
        // which yields exactly the 64-bit count.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n != std::mem::size_of::<u64>() as isize {
            return Err(PerfError::Read(last_error()));
        }
        Ok(value)
    }

    /// Signal this thread once the count reaches `at` (the PMU may stop the guest later).
    pub fn arm(&self, at: u64) -> Result<(), PerfError> {
        let now = self.read()?;
        self.set_period(at.saturating_sub(now))
    }

    pub fn disarm(&self) -> Result<(), PerfError> {
        self.set_period(NEVER)
    }
}
