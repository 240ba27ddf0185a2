//! `ttvm`: the command line. Parsing and exit codes only; the work is in the library crates.
mod commands;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ttvm", version, about = "Record, replay and debug whole KVM virtual machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List recorded traces.
    Ls(commands::trace::LsArgs),
    /// Print the events of a trace.
    Dump(commands::trace::DumpArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Ls(args) => commands::trace::ls(args),
        Command::Dump(args) => commands::trace::dump(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("ttvm: {err:#}");
            std::process::exit(120);
        }
    }
}
