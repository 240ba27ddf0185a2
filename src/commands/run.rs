//! `ttvm run`: boot a guest and run it free under KVM, nothing recorded.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ttvm_vmm::elf_image::read_image_file;
use ttvm_vmm::memory::{self, DEFAULT_MEM};
use ttvm_vmm::{Machine, MachineConfig, RealHost, SerialSource};

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
}

impl Default for MachineArgs {
    fn default() -> Self {
        MachineArgs {
            mem: DEFAULT_MEM,
            cmdline: String::new(),
            serial_in: None,
            serial_out: None,
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

/// `ttvm run [OPTIONS] GUEST`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// The guest: a PVH ELF image (32- or 64-bit).
    #[arg(value_name = "GUEST")]
    pub guest: PathBuf,
}

pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let image = read_image_file(&args.guest)?;
    run_image(&args.machine, &image)
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
