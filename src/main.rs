//! `ttvm`: the command line. Parsing and exit codes only; the work is in the library crates.
mod commands;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ttvm",
    version,
    about = "Record, replay and debug whole KVM virtual machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a bundled demo guest (default: `race`).
    Demo(commands::demo::DemoArgs),
    /// Boot a PVH guest and run it under KVM (nothing is recorded).
    Run(commands::run::RunArgs),
    /// Record a guest's execution into a trace (the position clock: see --clock).
    Record(commands::record::RecordArgs),
    /// Replay a trace exactly (default: the latest).
    Replay(commands::replay::ReplayArgs),
    /// Debug a trace in gdb, forwards and backwards (like `rr replay`).
    Debug(commands::debug::DebugArgs),
    /// Record and replay every bundled guest on this KVM and compare (conformance suite).
    Conformance(commands::conformance::ConformanceArgs),
    /// Check this host: KVM, single-step behaviour, PMU; which clocks will work.
    Doctor(commands::doctor::DoctorArgs),
    /// List recorded traces.
    Ls(commands::trace::LsArgs),
    /// Print the events of a trace.
    Dump(commands::trace::DumpArgs),
    /// Pack a trace into one checksummed file (for CI artifacts, other machines).
    Export(commands::archive::ExportArgs),
    /// Unpack a trace archive made by `ttvm export` (verified before anything is kept).
    Import(commands::archive::ImportArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    let result = match &cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Demo(args) => commands::demo::demo(args),
        Command::Record(args) => commands::record::run(args),
        Command::Conformance(args) => commands::conformance::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Debug(args) => commands::debug::run(args),
        Command::Ls(args) => commands::trace::ls(args),
        Command::Dump(args) => commands::trace::dump(args),
        Command::Export(args) => commands::archive::export(args),
        Command::Import(args) => commands::archive::import(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("ttvm: {}", error_text(&err));
            std::process::exit(ttvm_vmm::exit_code::VMM_ERROR);
        }
    }
}

/// The error and its causes, each cause appended only if the text so far does not
/// already say it: many messages embed their source ("cannot open X: <OS error>"), and
/// printing the chain as is would repeat it.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Logs go to stderr, filtered by `TTVM_LOG` (e.g. `TTVM_LOG=debug`); warnings by default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TTVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
