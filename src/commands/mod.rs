//! One module per subcommand: each parses nothing itself (clap did), calls a library and
//! returns the process exit code.
pub mod archive;
pub mod conformance;
pub mod debug;
pub mod demo;
pub mod doctor;
pub mod goto;
pub mod interrupt;
pub mod record;
pub mod replay;
pub mod run;
pub mod trace;
pub mod until_fail;
