//! `ttvm replay TRACE --gdb [ADDR:]PORT` serves a trace to gdb; `ttvm debug [TRACE]` does
//! what `rr replay` does: starts the server on a free local port, extracts the guest ELF
//! from the trace for symbols, and runs gdb connected to it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ttvm_gdb::server::ServeEnd;
use ttvm_gdb::{serve, DebugTarget, ServeOptions};
use ttvm_logs::{default_trace_root, resolve_trace, TraceReader};
use ttvm_replayer::timeline::{Timeline, TimelineOptions};
use ttvm_vmm::machine::memory::parse_size;

use super::interrupt::stop_flag;

/// `ttvm debug [TRACE] [--gdb-cmd GDB] [-- GDB ARGS...]`
#[derive(Debug, Args)]
pub struct DebugArgs {
    /// The trace directory or its name under the trace root [default: the latest trace].
    #[arg(value_name = "TRACE")]
    pub trace: Option<PathBuf>,
    /// The gdb to run.
    #[arg(long, value_name = "GDB", default_value = "gdb")]
    pub gdb_cmd: String,
    /// Write the guest's serial output to FILE (default: this terminal's stderr).
    #[arg(long, value_name = "FILE")]
    pub serial_out: Option<PathBuf>,
    /// Memory budget for the replayer's own checkpoints (e.g. 256M).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub checkpoint_mem: String,
    /// Extra arguments for gdb (after `--`).
    #[arg(last = true, value_name = "GDB ARGS")]
    pub gdb_args: Vec<String>,
}

/// `[ADDR:]PORT`; the address defaults to 127.0.0.1 (never all interfaces unless asked).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?}: give PORT or ADDR:PORT (e.g. 1234 or 127.0.0.1:1234)"))
}

fn serial_output(
    path: Option<&Path>,
) -> anyhow::Result<ttvm_vmm::machine::devices::serial::SerialOutput> {
    Ok(match path {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create --serial-out {}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    })
}

fn open_target(trace: &Path, serial: Option<&Path>, mem: &str) -> anyhow::Result<DebugTarget> {
    let checkpoint_mem =
        parse_size(mem).with_context(|| format!("--checkpoint-mem {mem:?}"))? as usize;
    // The replay's own stop flag: Ctrl-C belongs to gdb (it sends an interrupt packet).
    let timeline = Timeline::open(
        trace,
        serial_output(serial)?,
        Arc::new(AtomicBool::new(false)),
        TimelineOptions {
            checkpoint_mem,
            ..TimelineOptions::default()
        },
    )
    .with_context(|| format!("cannot replay {}", trace.display()))?;
    Ok(DebugTarget::new(timeline))
}

/// `ttvm replay TRACE --gdb [ADDR:]PORT`.
pub fn serve_replay(
    trace: &Path,
    listen: SocketAddr,
    serial: Option<&Path>,
    mem: &str,
) -> anyhow::Result<i32> {
    let mut target = open_target(trace, serial, mem)?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen for gdb on {listen}"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "ttvm: serving {} to gdb on {addr}; in gdb: target remote {addr}",
        trace.display()
    );
    let end = serve(
        &mut target,
        listener,
        ServeOptions {
            once: false,
            stop: stop_flag(),
        },
    )?;
    Ok(match end {
        ServeEnd::Stopped => ttvm_vmm::exit_code::INTERRUPTED,
        _ => 0,
    })
}

/// `ttvm debug`.
pub fn run(args: &DebugArgs) -> anyhow::Result<i32> {
    let trace = resolve_trace(&default_trace_root()?, args.trace.as_deref())?;
    let reader = TraceReader::open(&trace)?;
    let image = reader.guest_image()?;
    let name = reader.header().guest_image.name.clone();
    drop(reader);
    let elf = std::env::temp_dir().join(format!("ttvm-{}-{}", std::process::id(), name));
    std::fs::write(&elf, &image)
        .with_context(|| format!("cannot write the guest image to {}", elf.display()))?;
    let result = debug_with(args, &trace, &elf);
    let _ = std::fs::remove_file(&elf);
    result
}

fn debug_with(args: &DebugArgs, trace: &Path, elf: &Path) -> anyhow::Result<i32> {
    let mut target = open_target(trace, args.serial_out.as_deref(), &args.checkpoint_mem)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot listen for gdb")?;
    let addr = listener.local_addr()?;
    // SAFETY: ignoring SIGINT is async-signal-safe; gdb, in the same terminal, turns
    // Ctrl-C into an interrupt packet for us.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut child = Command::new(&args.gdb_cmd)
        .arg("-q")
        .arg(elf)
        .arg("-ex")
        .arg(format!("target remote {addr}"))
        .args(&args.gdb_args)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {:?} (use --gdb-cmd to pick a gdb)",
                args.gdb_cmd
            )
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let gdb_done = stop.clone();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        gdb_done.store(true, Ordering::SeqCst);
        status
    });
    serve(
        &mut target,
        listener,
        ServeOptions {
            once: true,
            stop: stop.clone(),
        },
    )?;
    let status = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the gdb waiter thread failed"))??;
    Ok(status.code().unwrap_or(ttvm_vmm::exit_code::INTERRUPTED))
}
