//! Shared by the benchmarks: recording a test guest and opening a timeline.
#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ttvm_logs::TraceLocation;
use ttvm_recorder::checkpoints::CheckpointEvery;
use ttvm_recorder::{record, RecordOptions, Recording};
use ttvm_replayer::timeline::{Timeline, TimelineOptions};
use ttvm_vmm::run::singlestep::TimeConfig;
use ttvm_vmm::{MachineConfig, SerialSource};

/// Records bundled guest `name` with `cmdline` into `trace`.
pub fn record_guest(name: &str, cmdline: &str, trace: &Path, every: CheckpointEvery) -> Recording {
    let image = ttvm_guests::elf_bytes(name).expect("guest");
    record(
        RecordOptions {
            machine: MachineConfig {
                cmdline: cmdline.to_string(),
                ..MachineConfig::default()
            },
            time: TimeConfig::default(),
            chaos: None,
            guest_name: name.into(),
            image_name: format!("{name}.elf"),
            location: TraceLocation::Exact(trace.to_path_buf()),
            progress: false,
            checkpoints: every,
            clock: ttvm_recorder::RecordClock::Singlestep,
        },
        image,
        Box::new(io::sink()),
        SerialSource::None,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("record")
}

/// A timeline on `trace` with the default options, output discarded.
pub fn timeline(trace: &Path) -> Timeline {
    Timeline::open(
        trace,
        Box::new(io::sink()),
        Arc::new(AtomicBool::new(false)),
        TimelineOptions::default(),
    )
    .expect("timeline")
}
