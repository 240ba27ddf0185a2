//! `ttvm doctor`: checks this host and says which clocks will work (like rr's checks).

use clap::Args;
use ttvm_vmm::host::doctor::{diagnose, Status};
use ttvm_vmm::host::kvm::kvm_device_path;

/// `ttvm doctor [--json]`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the diagnosis as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<i32> {
    let d = diagnose(&kvm_device_path());
    let usable = d.clocks.iter().any(|c| c.usable);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        for c in &d.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            println!("[{mark}] {}: {}", c.name, c.detail);
        }
        for c in &d.clocks {
            println!(
                "clock {:<12} {}: {}",
                c.clock,
                if c.usable { "usable" } else { "not usable" },
                c.why
            );
        }
        println!("verdict: {}", d.verdict);
    }
    Ok(if usable { 0 } else { 1 })
}
