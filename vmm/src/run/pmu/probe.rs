//! Can this host count guest-only retired conditional branches (rr's "ticks")? The
//! performance-counter clock needs it; this module only asks the kernel and explains its
//! answer. Instructions-retired is not deterministic on x86 and is never used.

use serde::Serialize;

/// The raw event ttvm would count on this CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchEvent {
    pub vendor: String,
    /// perf_event_attr.config for PERF_TYPE_RAW.
    pub config: u64,
    pub name: &'static str,
}

/// The outcome of trying to open the counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PmuProbe {
    pub event: Option<BranchEvent>,
    /// None: the counter opened; Some: the errno and what it means.
    pub error: Option<String>,
    pub perf_event_paranoid: Option<i32>,
}

impl PmuProbe {
    pub fn available(&self) -> bool {
        self.event.is_some() && self.error.is_none()
    }
}

fn cpu_vendor() -> String {
    let r = core::arch::x86_64::__cpuid(0);
    let mut v = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// The retired-conditional-branch event for this CPU's vendor.
pub fn branch_event() -> Option<BranchEvent> {
    let vendor = cpu_vendor();
    let (config, name) = match vendor.as_str() {
        // BR_INST_RETIRED.CONDITIONAL: event 0xC4, umask 0x01.
        "GenuineIntel" => (0x01c4, "BR_INST_RETIRED.CONDITIONAL"),
        // Zen: PMCx0D1, retired conditional branch instructions.
        "AuthenticAMD" | "HygonGenuine" => {
            (0x00d1, "Retired Conditional Branch Instructions (PMCx0D1)")
        }
        _ => return None,
    };
    Some(BranchEvent {
        vendor,
        config,
        name,
    })
}

pub(crate) fn explain(errno: i32) -> String {
    let what = match errno {
        libc::ENOENT => "the kernel has no such hardware event: no PMU is exposed to this machine (usual inside a VM without a virtual PMU), or the CPU model is unknown to perf",
        libc::ENODEV => "no PMU can count this event here",
        libc::EOPNOTSUPP => "the PMU cannot count this way (guest-only counting or overflow interrupts unsupported)",
        libc::EACCES | libc::EPERM => "not permitted: lower kernel.perf_event_paranoid (sysctl kernel.perf_event_paranoid=1) or grant CAP_PERFMON",
        libc::EINVAL => "the PMU rejects this event code (an unsupported CPU model?)",
        libc::EBUSY => "the counters are in use by another tool",
        _ => "perf_event_open failed",
    };
    format!(
        "perf_event_open: {} ({what})",
        std::io::Error::from_raw_os_error(errno)
    )
}

/// Tries to open a guest-only counter of retired conditional branches on this thread.
pub fn probe() -> PmuProbe {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let Some(event) = branch_event() else {
        return PmuProbe {
            event: None,
            error: Some(format!(
                "unknown CPU vendor {:?}: no branch event known",
                cpu_vendor()
            )),
            perf_event_paranoid: paranoid,
        };
    };
    let mut attr = perf_event_open_sys::bindings::perf_event_attr {
        type_: perf_event_open_sys::bindings::PERF_TYPE_RAW,
        size: std::mem::size_of::<perf_event_open_sys::bindings::perf_event_attr>() as u32,
        config: event.config,
        ..Default::default()
    };
    attr.set_disabled(1);
    attr.set_exclude_host(1);
    attr.set_exclude_hv(1);
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr; pid 0 / cpu -1 counts
    // the calling thread; the returned fd is closed right away.
    let fd = unsafe { perf_event_open_sys::perf_event_open(&mut attr, 0, -1, -1, 0) };
    let error = if fd < 0 {
        Some(explain(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        // SAFETY: fd is a descriptor we own.
        unsafe { libc::close(fd) };
        None
    };
    PmuProbe {
        event: Some(event),
        error,
        perf_event_paranoid: paranoid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_explained() {
        assert!(explain(libc::ENOENT).contains("no PMU is exposed"));
        assert!(explain(libc::EACCES).contains("perf_event_paranoid"));
    }
}
