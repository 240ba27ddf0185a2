//! `ttvm run`: boot a guest and run it free under KVM, nothing recorded.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ttvm_logs::files::{self, FileError};
use ttvm_logs::MAX_GUEST_IMAGE_BYTES;
use ttvm_vmm::machine::memory::{self, DEFAULT_MEM};
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::singlestep::TimeConfig;
use ttvm_vmm::{Initrd, Machine, MachineConfig, RealHost, SerialSource};

/// Options shared by every command that builds a machine.
#[derive(Debug, Clone, Args)]
pub struct MachineArgs {
    /// Guest RAM, e.g. 64M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_mem)]
    pub mem: u64,
    /// Kernel command line handed to the guest (PVH start info).
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Serial input: a file, or `-` for stdin [default: stdin].
    #[arg(long, value_name = "FILE|-")]
    pub serial_in: Option<PathBuf>,
    /// Write the guest's serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub serial_out: Option<PathBuf>,
    /// An initial RAM disk (e.g. a cpio archive for Linux), handed to the guest as the PVH
    /// start info's first module and embedded in recorded traces.
    #[arg(long, value_name = "FILE", value_parser = load_initrd)]
    pub initrd: Option<Initrd>,
}

fn load_initrd(text: &str) -> Result<Initrd, String> {
    Initrd::load(Path::new(text))
}

impl Default for MachineArgs {
    fn default() -> Self {
        MachineArgs {
            mem: DEFAULT_MEM,
            cmdline: String::new(),
            serial_in: None,
            serial_out: None,
            initrd: None,
        }
    }
}

fn parse_mem(text: &str) -> Result<u64, String> {
    memory::parse_size(text)
        .and_then(memory::validate_size)
        .map_err(|e| e.to_string())
}

impl MachineArgs {
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            mem_bytes: self.mem,
            cmdline: self.cmdline.clone(),
            initrd: self.initrd.clone(),
            ..MachineConfig::default()
        }
    }

    /// Where the guest's serial output goes (the file is created now).
    pub fn serial_output(&self) -> anyhow::Result<Box<dyn Write + Send>> {
        Ok(match &self.serial_out {
            Some(path) => Box::new(
                File::create(path)
                    .with_context(|| format!("cannot create --serial-out {}", path.display()))?,
            ),
            None => Box::new(io::stdout()),
        })
    }

    pub fn serial_source(&self) -> anyhow::Result<SerialSource> {
        Ok(match &self.serial_in {
            Some(path) if path == Path::new("-") => SerialSource::Reader(Box::new(io::stdin())),
            Some(path) => SerialSource::Reader(Box::new(
                File::open(path)
                    .with_context(|| format!("cannot open --serial-in {}", path.display()))?,
            )),
            None => SerialSource::Reader(Box::new(io::stdin())),
        })
    }
}

/// How the guest executes under `ttvm run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunClock {
    /// Free-running under KVM; guest time is host time (fastest; nothing is exact).
    None,
    /// One single step at a time with virtual time, exactly as `ttvm record` runs.
    Singlestep,
}

/// `ttvm run [OPTIONS] GUEST`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Execution clock: `none` runs free, `singlestep` runs as the recorder does.
    #[arg(long, value_enum, default_value = "none")]
    pub clock: RunClock,
    /// Guest nanoseconds per step under the single-step clock.
    #[arg(long, value_name = "NS", default_value_t = TimeConfig::default().ns_per_step)]
    pub time_rate: u64,
    /// The guest: a PVH ELF image (32- or 64-bit).
    #[arg(value_name = "GUEST")]
    pub guest: PathBuf,
}

/// Reads the guest image named on the command line: a regular file (never a FIFO or a
/// device, which could block or never end) of at most [`MAX_GUEST_IMAGE_BYTES`].
pub fn read_guest_image(path: &Path) -> Result<Vec<u8>, FileError> {
    files::read_bounded(path, MAX_GUEST_IMAGE_BYTES, "a guest image")
}

pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let image = read_guest_image(&args.guest).context("cannot read the guest image")?;
    match args.clock {
        RunClock::None => run_image(&args.machine, &image),
        RunClock::Singlestep => run_image_stepped(&args.machine, &image, args.time_rate),
    }
}

/// Runs `image` under the single-step clock with the live host; returns the exit code.
pub fn run_image_stepped(
    opts: &MachineArgs,
    image: &[u8],
    ns_per_step: u64,
) -> anyhow::Result<i32> {
    let mut machine = Machine::new(opts.machine_config(), image, opts.serial_output()?)?;
    let mut driver = LiveDriver::new(opts.serial_source()?);
    let report = machine.run_stepped(&mut driver, TimeConfig { ns_per_step })?;
    let _ = io::stdout().flush();
    tracing::info!(
        steps = report.position,
        emulated = report.emulated,
        seconds = report.duration.as_secs_f64(),
        "stepped run finished"
    );
    match report.end {
        Some(end) => {
            eprintln!("ttvm: {end} (after {} steps)", report.position);
            Ok(end.exit_code())
        }
        None => {
            eprintln!("ttvm: stopped at step {}", report.position);
            Ok(ttvm_vmm::exit_code::INTERRUPTED)
        }
    }
}

/// Boots `image` with `opts` and runs it to its end; returns the exit code.
pub fn run_image(opts: &MachineArgs, image: &[u8]) -> anyhow::Result<i32> {
    let mut machine = Machine::new(opts.machine_config(), image, opts.serial_output()?)?;
    let mut host = RealHost::new(opts.serial_source()?);
    let report = machine.run(&mut host)?;
    let _ = io::stdout().flush();
    tracing::info!(
        exits = report.stats.exits,
        interrupts = report.stats.interrupts_injected,
        seconds = report.duration.as_secs_f64(),
        "run finished"
    );
    eprintln!("ttvm: {}", report.end);
    Ok(report.end.exit_code())
}
