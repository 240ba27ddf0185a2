//! `ttvm record`: run a guest under a position clock (`--clock`) and write a trace.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ttvm_logs::TraceLocation;
use ttvm_recorder::checkpoints::CheckpointEvery;
use ttvm_recorder::clock_choice::{self, ClockChoice};
use ttvm_recorder::{record, RecordClock, RecordOptions};
use ttvm_vmm::host::pmu_selftest;
use ttvm_vmm::run::singlestep::TimeConfig;

use super::interrupt::stop_flag;
use super::run::{read_guest_image, MachineArgs};
use super::until_fail::{self, ChaosArgs};

/// `ttvm record [OPTIONS] GUEST`
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Write the trace to exactly this directory (created; must be empty if it exists).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Guest nanoseconds per step (virtual time rate); per tick with the pmu clock.
    #[arg(long, value_name = "NS", default_value_t = TimeConfig::default().ns_per_step)]
    pub time_rate: u64,
    /// Checkpoint spacing in the trace: positions (30000), seconds of recording (0.5s), or
    /// `never`. Checkpoints let replay and gdb jump anywhere quickly.
    #[arg(long, value_name = "N|SECSs|never", default_value = "30000")]
    pub checkpoint_every: CheckpointEvery,
    /// Position clock: `pmu` (hardware branch counter), `singlestep`, or `auto` (pmu when it
    /// works here, else singlestep with a note saying why). `ttvm doctor` shows what works.
    /// `pmu-emulated` runs the pmu clock with ttvm's software branch counter (as slow as
    /// singlestep; for checking pmu recordings on hosts without a PMU).
    #[arg(
        long,
        value_name = "auto|pmu|singlestep|pmu-emulated",
        default_value = "auto"
    )]
    pub clock: ClockChoice,
    /// Never print progress lines (by default they appear on a terminal's stderr).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub chaos: ChaosArgs,
    /// The guest: a PVH ELF image.
    #[arg(value_name = "GUEST")]
    pub guest: PathBuf,
}

pub fn run(args: &RecordArgs) -> anyhow::Result<i32> {
    let image = read_guest_image(&args.guest).context("cannot read the guest image")?;
    let name = args
        .guest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".to_string());
    let image_name = args
        .guest
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest.elf".to_string());
    record_image(args, &image, &name, &image_name)
}

/// Records `image` with the options of `args`; returns the exit code.
pub fn record_image(
    args: &RecordArgs,
    image: &[u8],
    name: &str,
    image_name: &str,
) -> anyhow::Result<i32> {
    // A bad image is the first thing to say, before any note about clocks.
    ttvm_vmm::machine::elf_image::parse(image, args.machine.machine_config().mem_bytes)?;
    let clock = if args.chaos.chaos {
        // Chaos perturbs the single-step clock's timing model.
        match args.clock {
            ClockChoice::Pmu | ClockChoice::PmuEmulated => anyhow::bail!(
                "--chaos works with the single-step clock: drop --clock or use --clock singlestep"
            ),
            ClockChoice::Auto | ClockChoice::Singlestep => RecordClock::Singlestep,
        }
    } else {
        let selection =
            clock_choice::select(args.clock, &ttvm_vmm::run::pmu::probe::probe(), |event| {
                pmu_selftest::verdict(event, 4)
            })?;
        if let Some(note) = &selection.note {
            eprintln!("ttvm: note: {note}");
        }
        selection.clock
    };
    if let Some(runs) = args.chaos.until_fail {
        return until_fail::run(args, &clock, image, name, image_name, runs);
    }
    let location = match &args.output {
        Some(dir) => TraceLocation::Exact(dir.clone()),
        None => TraceLocation::default_root()?,
    };
    let seed = args.chaos.first_seed();
    let opts = record_options(args, &clock, name, image_name, location, seed);
    let recording = record(
        opts,
        image,
        args.machine.serial_output()?,
        args.machine.serial_source()?,
        stop_flag(),
    )?;
    let _ = std::io::stdout().flush();
    if let Some(plan) = &recording.chaos {
        eprintln!("ttvm: {}", plan.describe());
    }
    match &recording.end {
        Some(end) => eprintln!(
            "ttvm: {end} ({} {}, {} events, {} checkpoints, {:.2} s)",
            recording.steps,
            recording.position_unit,
            recording.events,
            recording.checkpoints.count,
            recording.duration.as_secs_f64()
        ),
        None => eprintln!(
            "ttvm: recording stopped by the user at position {} ({} events)",
            recording.steps, recording.events
        ),
    }
    eprintln!("ttvm: trace: {}", recording.trace_dir.display());
    Ok(recording.exit_code())
}

/// The recorder's options for `args`, a trace location and a chaos seed.
pub fn record_options(
    args: &RecordArgs,
    clock: &RecordClock,
    name: &str,
    image_name: &str,
    location: TraceLocation,
    chaos: Option<u64>,
) -> RecordOptions {
    RecordOptions {
        machine: args.machine.machine_config(),
        time: TimeConfig {
            ns_per_step: args.time_rate,
        },
        chaos,
        guest_name: name.to_string(),
        image_name: image_name.to_string(),
        location,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        checkpoints: args.checkpoint_every,
        clock: clock.clone(),
    }
}
