//! `ttvm ls` and `ttvm dump`: owned by the trace-format work (issue 3).
use clap::Args;

/// `ttvm ls [DIR]`
#[derive(Debug, Args)]
pub struct LsArgs {}

/// `ttvm dump TRACE`
#[derive(Debug, Args)]
pub struct DumpArgs {}

pub fn ls(_args: &LsArgs) -> anyhow::Result<i32> {
    anyhow::bail!("ttvm ls: the trace format is being built")
}

pub fn dump(_args: &DumpArgs) -> anyhow::Result<i32> {
    anyhow::bail!("ttvm dump: the trace format is being built")
}
