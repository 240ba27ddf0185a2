//! `ttvm doctor` describes this host: KVM works, single-step is usable, and the PMU's
//! absence is reported with the kernel's reason, never silently.

mod common;

use common::*;

#[test]
fn doctor_reports_clocks_and_the_pmu_with_reasons() {
    let o = run(&["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let clocks = d["clocks"].as_array().unwrap();
    let singlestep = clocks.iter().find(|c| c["clock"] == "singlestep").unwrap();
    assert_eq!(singlestep["usable"], true, "{d}");
    let pmu = clocks.iter().find(|c| c["clock"] == "pmu").unwrap();
    assert!(!pmu["why"].as_str().unwrap().is_empty());
    let checks = d["checks"].as_array().unwrap();
    let accuracy = checks.iter().find(|c| c["name"] == "pmu accuracy").unwrap();
    assert_eq!(
        pmu["usable"],
        accuracy["status"] == "ok",
        "the pmu clock is usable exactly when its self-test passes: {d}"
    );
    let emulated = clocks
        .iter()
        .find(|c| c["clock"] == "pmu-emulated")
        .unwrap();
    assert_eq!(emulated["usable"], true, "{d}");
    let pmu_check = checks.iter().find(|c| c["name"] == "pmu").unwrap();
    if pmu_check["status"] != "ok" {
        // A host without a usable PMU (like the project's machines): the errno and what it
        // means are reported.
        let detail = pmu_check["detail"].as_str().unwrap();
        assert!(detail.contains("perf_event_open"), "{detail}");
    }
    // The pmu clock's convergence runs on this KVM with the software counter, PMU or not.
    let convergence = checks
        .iter()
        .find(|c| c["name"] == "pmu convergence (software counter)")
        .unwrap();
    assert_eq!(convergence["status"], "ok", "{convergence}");
    assert!(
        convergence["detail"]
            .as_str()
            .unwrap()
            .contains("(3000 branches) reached exactly"),
        "{convergence}"
    );
    assert_eq!(d["kvm_module"], ttvm_vmm::host::kvm::kvm_module());
    for name in [
        "kvm device",
        "single-step",
        "single-step at CPL3",
        "tsc control",
    ] {
        assert!(
            checks.iter().any(|c| c["name"] == name),
            "missing check {name}"
        );
    }
    let text = run(&["doctor"]);
    assert!(
        stdout(&text).contains("verdict: ttvm works here"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn doctor_without_kvm_says_what_to_do() {
    let o = ttvm()
        .env("TTVM_KVM_DEVICE", "/nonexistent/kvm")
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("[FAIL] kvm device") && out.contains("modprobe"),
        "{out}"
    );
    assert!(out.contains("ttvm cannot record here"), "{out}");
}
