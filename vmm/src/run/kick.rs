//! Getting the vCPU thread out of KVM_RUN: for timer deadlines and host input.
//!
//! A real-time signal with a do-nothing handler (installed without SA_RESTART) makes
//! KVM_RUN return EINTR. A signal that arrives while the thread is *not* in KVM_RUN would be
//! lost, so the handler also sets `kvm_run.immediate_exit`: the next KVM_RUN then returns
//! EINTR at once. The run loop clears `immediate_exit` before it looks at timers and input,
//! so a kick is never missed. Deadlines use a per-thread POSIX timer (SIGEV_THREAD_ID).

use std::cell::Cell;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU running on this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("installing the vCPU kick signal handler failed: {0}")]
    Handler(std::io::Error),
    #[error("creating the vCPU deadline timer failed: {0}")]
    TimerCreate(std::io::Error),
    #[error("arming the vCPU deadline timer failed: {0}")]
    TimerSet(std::io::Error),
}

pub(crate) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_signal: libc::c_int) {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer was set by `Kicker::new` on this very thread to the
            // immediate_exit byte of a kvm_run mapping that outlives the Kicker (it is cleared
            // in Drop before the mapping can go away). A byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

pub(crate) fn install_handler() -> Result<(), KickError> {
    static RESULT: OnceLock<i32> = OnceLock::new();
    let errno = *RESULT.get_or_init(|| {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is a valid
        // argument; the handler only does async-signal-safe work.
        let ret = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            action.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut())
        };
        if ret == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        }
    });
    match errno {
        0 => Ok(()),
        e => Err(KickError::Handler(std::io::Error::from_raw_os_error(e))),
    }
}

/// A way for other threads to kick the vCPU thread; harmless after the vCPU is gone.
#[derive(Clone)]
pub struct KickHandle {
    thread: Arc<Mutex<Option<libc::pthread_t>>>,
}

impl KickHandle {
    pub fn kick(&self) {
        if let Ok(guard) = self.thread.lock() {
            if let Some(thread) = *guard {
                // SAFETY: `thread` is the vCPU thread, alive while it is in the slot (the
                // Kicker empties the slot under this lock before the thread can exit).
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
        }
    }
}

/// Owns the kick machinery of the current (vCPU) thread.
pub struct Kicker {
    timer: libc::timer_t,
    handle: KickHandle,
    epoch: Instant,
}

impl Kicker {
    /// Sets up kicks for the current thread, whose vCPU's immediate_exit byte is at
    /// `immediate_exit`. Deadlines passed to `arm` are nanoseconds since `epoch`.
    pub fn new(immediate_exit: *mut u8, epoch: Instant) -> Result<Kicker, KickError> {
        install_handler()?;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        // SAFETY: zeroed sigevent then filled per timer_create(2) for SIGEV_THREAD_ID.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = kick_signal();
        event.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid clock id, event and out-pointer.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(KickError::TimerCreate(std::io::Error::last_os_error()));
        }
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Kicker {
            timer,
            handle: KickHandle {
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            epoch,
        })
    }

    pub fn handle(&self) -> KickHandle {
        self.handle.clone()
    }

    /// Kick the thread at `deadline_ns` after the epoch (None: disarm).
    pub fn arm(&mut self, deadline_ns: Option<u64>) -> Result<(), KickError> {
        let value = match deadline_ns {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            Some(ns) => {
                let from_now = ns
                    .saturating_sub(self.epoch.elapsed().as_nanos() as u64)
                    .max(1);
                libc::timespec {
                    tv_sec: (from_now / 1_000_000_000) as libc::time_t,
                    tv_nsec: (from_now % 1_000_000_000) as libc::c_long,
                }
            }
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `timer` was created by timer_create and not yet deleted.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(KickError::TimerSet(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.handle.thread.lock() {
            *slot = None;
        }
        // SAFETY: the timer belongs to this Kicker; deleting it stops further signals.
        unsafe { libc::timer_delete(self.timer) };
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}
