//! `ttvm export` / `ttvm import`: one checksummed file per trace (`ttvm_logs::archive`).
//!
//! Exit codes: 0 done; 3 (import) the archive is damaged, truncated, of a newer format or
//! not an archive: nothing was written; 120 anything else (the destination exists, the
//! trace to export is unreadable, I/O errors), message on stderr.

use std::path::PathBuf;

use clap::Args;
use ttvm_logs::archive::{self, ImportTarget};
use ttvm_logs::report::format_size;
use ttvm_logs::{default_trace_root, resolve_trace};

/// Exit code of `ttvm import` for a damaged archive (as `ttvm dump` for a damaged trace).
pub const EXIT_DAMAGED: i32 = 3;

/// `ttvm export [TRACE] [-o FILE]`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The trace directory or its name under the trace root [default: the latest trace].
    #[arg(value_name = "TRACE")]
    pub trace: Option<PathBuf>,
    /// The archive to create (never overwritten) [default: ./<trace name>.ttvm].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `ttvm import FILE [-o DIR]`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An archive made by `ttvm export`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Unpack into exactly this directory (must not exist) [default: the trace root, under
    /// the archived trace's name; `latest-trace` then points at it].
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
}

pub fn export(args: &ExportArgs) -> anyhow::Result<i32> {
    let trace = match &args.trace {
        Some(path) if path.exists() => path.clone(),
        given => resolve_trace(&default_trace_root()?, given.as_deref())?,
    };
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| archive::default_archive_name(&trace));
    let done = archive::export(&trace, &out)?;
    eprintln!(
        "ttvm: exported {} to {} ({}, trace {}, {} entries, sha256 {})",
        trace.display(),
        done.file.display(),
        format_size(done.archive_bytes),
        format_size(done.trace_bytes),
        done.entries,
        done.sha256
    );
    println!("{}", done.file.display());
    Ok(0)
}

pub fn import(args: &ImportArgs) -> anyhow::Result<i32> {
    let target = match &args.output {
        Some(dir) => ImportTarget::Exact(dir.clone()),
        None => ImportTarget::InRoot(default_trace_root()?),
    };
    match archive::import(&args.file, &target) {
        Ok(done) => {
            eprintln!(
                "ttvm: imported {} ({}, {} entries, sha256 verified); replay it with: ttvm replay {}",
                done.dir.display(),
                format_size(done.trace_bytes),
                done.entries,
                done.dir.display()
            );
            println!("{}", done.dir.display());
            Ok(0)
        }
        Err(e) if e.is_damaged() => {
            eprintln!("ttvm import: {e}; nothing was imported");
            Ok(EXIT_DAMAGED)
        }
        Err(e) => Err(e.into()),
    }
}
