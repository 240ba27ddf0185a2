//! `ttvm-gdb`: serves a replayed trace to GNU gdb over the remote protocol (gdbstub), with
//! reverse execution built on the replayer's timeline.

pub mod arch;
pub mod monitor;
pub mod server;
pub mod target;
pub mod watch;

pub use server::{serve, ServeOptions};
pub use target::DebugTarget;
