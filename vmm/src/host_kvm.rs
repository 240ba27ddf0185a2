//! Which KVM this is: recorded in traces, because single-step semantics (and so positions)
//! differ between KVM implementations (see HOST-NOTES: rep-string granularity, the
//! interrupt-entry step).

/// The loaded KVM vendor module: `kvm_intel`, `kvm_amd`, `kvm_pvm`, or `unknown`.
pub fn kvm_module() -> String {
    for module in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        if std::path::Path::new("/sys/module").join(module).exists() {
            return module.to_string();
        }
    }
    "unknown".to_string()
}
