//! `ttvm demo`: run one of the bundled test guests, no files needed.

use clap::Args;

use super::run::{run_image, run_image_stepped, MachineArgs, RunClock};
use ttvm_vmm::run::singlestep::TimeConfig;

/// `ttvm demo [NAME]`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The bundled guest to run (see --list).
    #[arg(default_value = "race")]
    pub name: String,
    /// List the bundled guests.
    #[arg(long)]
    pub list: bool,
    /// Execution clock.
    #[arg(long, value_enum, default_value = "singlestep")]
    pub clock: RunClock,
    #[command(flatten)]
    pub machine: MachineArgs,
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<i32> {
    if args.list {
        for name in ttvm_guests::NAMES {
            println!("{name}");
        }
        return Ok(0);
    }
    let Some(image) = ttvm_guests::elf_bytes(&args.name) else {
        anyhow::bail!(
            "no bundled guest named {:?}; the bundled guests are: {}",
            args.name,
            ttvm_guests::NAMES.join(", ")
        );
    };
    eprintln!(
        "ttvm: running the bundled `{}` guest ({} clock)",
        args.name,
        match args.clock {
            RunClock::None => "free-running",
            RunClock::Singlestep => "single-step",
        }
    );
    match args.clock {
        RunClock::None => run_image(&args.machine, image),
        RunClock::Singlestep => {
            run_image_stepped(&args.machine, image, TimeConfig::default().ns_per_step)
        }
    }
}
