//! The host's KVM: opening it and checking that it offers what ttvm needs (with errors that
//! say what to do), and which KVM implementation it is.

use std::io;
use std::path::{Path, PathBuf};

use std::os::fd::{FromRawFd, IntoRawFd};

use kvm_ioctls::{Cap, Kvm};

/// The KVM device, overridable with `TTVM_KVM_DEVICE` (for tests and unusual setups).
pub fn kvm_device_path() -> PathBuf {
    std::env::var_os("TTVM_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}

/// The KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum KvmHostError {
    #[error(
        "{path} does not exist: this host has no KVM. Enable hardware virtualization in the \
         firmware and load the module (`modprobe kvm_intel` or `modprobe kvm_amd`), or run \
         ttvm on a host or VM with nested virtualization"
    )]
    Missing { path: PathBuf },
    #[error(
        "no permission to open {path}: add your user to its group (usually `sudo usermod -aG \
         kvm $USER`, then log in again) or adjust its permissions"
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a KVM device (KVM_GET_API_VERSION failed: {source})")]
    NotKvm { path: PathBuf, source: io::Error },
    #[error("KVM API version {found} is not supported (ttvm needs version {KVM_API_VERSION})")]
    ApiVersion { found: i32 },
    #[error(
        "this KVM lacks the capability {name} ({what_for}); the host kernel is too old or \
         restricted: use a Linux host with a newer KVM"
    )]
    MissingCapability {
        name: &'static str,
        what_for: &'static str,
    },
}

/// A KVM capability ttvm relies on, with why.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub cap: Cap,
    pub name: &'static str,
    pub what_for: &'static str,
}

/// What every run needs.
pub const RUN_REQUIREMENTS: &[Requirement] = &[
    Requirement {
        cap: Cap::UserMemory,
        name: "KVM_CAP_USER_MEMORY",
        what_for: "guest RAM",
    },
    Requirement {
        cap: Cap::ExtCpuid,
        name: "KVM_CAP_EXT_CPUID",
        what_for: "setting the guest's CPUID",
    },
    Requirement {
        cap: Cap::ImmediateExit,
        name: "KVM_CAP_IMMEDIATE_EXIT",
        what_for: "interrupting the vCPU for timers and input",
    },
    Requirement {
        cap: Cap::SetGuestDebug,
        name: "KVM_CAP_SET_GUEST_DEBUG",
        what_for: "single-stepping the guest",
    },
    Requirement {
        cap: Cap::SyncRegs,
        name: "KVM_CAP_SYNC_REGS",
        what_for: "reading registers on every exit without extra ioctls",
    },
];

/// Something that answers capability queries: KVM itself, or a fake in tests.
pub trait CapabilityQuery {
    fn has(&self, cap: Cap) -> bool;
}

impl CapabilityQuery for Kvm {
    fn has(&self, cap: Cap) -> bool {
        self.check_extension(cap)
    }
}

/// The first requirement `kvm` does not meet, as an error naming it.
pub fn check_requirements(
    kvm: &dyn CapabilityQuery,
    requirements: &[Requirement],
) -> Result<(), KvmHostError> {
    match requirements.iter().find(|r| !kvm.has(r.cap)) {
        Some(r) => Err(KvmHostError::MissingCapability {
            name: r.name,
            what_for: r.what_for,
        }),
        None => Ok(()),
    }
}

/// Opens the KVM device at `path` and checks the API version and `requirements`.
pub fn open_kvm(path: &Path, requirements: &[Requirement]) -> Result<Kvm, KvmHostError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            let path = path.to_path_buf();
            match e.kind() {
                io::ErrorKind::NotFound => KvmHostError::Missing { path },
                io::ErrorKind::PermissionDenied => KvmHostError::PermissionDenied { path },
                _ => KvmHostError::Open { path, source: e },
            }
        })?;
    // SAFETY: `file` is an open descriptor we own (std opens it with O_CLOEXEC); ownership
    // moves into `Kvm`, which closes it on drop. Whether it really is KVM is checked next.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(KvmHostError::NotKvm {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    if version != KVM_API_VERSION {
        return Err(KvmHostError::ApiVersion { found: version });
    }
    check_requirements(&kvm, requirements)?;
    Ok(kvm)
}

/// The loaded KVM vendor module: `kvm_intel`, `kvm_amd`, `kvm_pvm`, or `unknown`. Traces
/// record it, because single-step semantics (and so positions) differ between KVM
/// implementations (see HOST-NOTES: rep-string granularity, the interrupt-entry step).
pub fn kvm_module() -> String {
    for module in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        if std::path::Path::new("/sys/module").join(module).exists() {
            return module.to_string();
        }
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lacking(Cap);
    impl CapabilityQuery for Lacking {
        fn has(&self, cap: Cap) -> bool {
            cap as u32 != self.0 as u32
        }
    }

    #[test]
    fn missing_capability_is_named() {
        let err = check_requirements(&Lacking(Cap::SyncRegs), RUN_REQUIREMENTS).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("KVM_CAP_SYNC_REGS"), "{text}");
        assert!(text.contains("too old"), "{text}");
        assert!(check_requirements(&Lacking(Cap::Hlt), RUN_REQUIREMENTS).is_ok());
    }

    #[test]
    fn missing_device_says_what_to_do() {
        let err = open_kvm(Path::new("/nonexistent/kvm"), RUN_REQUIREMENTS).unwrap_err();
        assert!(matches!(err, KvmHostError::Missing { .. }));
        assert!(err.to_string().contains("modprobe"), "{err}");
    }

    #[test]
    fn a_regular_file_is_not_kvm() {
        let dir = std::env::temp_dir().join(format!("ttvm-kvm-test-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let err = open_kvm(&dir, RUN_REQUIREMENTS).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(err, KvmHostError::NotKvm { .. }), "{err}");
    }
}
