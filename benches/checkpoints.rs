//! Checkpoint and seek costs on this host (issue 5's benchmark), measured in one run:
//!
//!     cargo bench --bench checkpoints
//!
//! 1. Checkpoint time and size, full vs incremental, for 64 MiB and 256 MiB of RAM and
//!    0 / 1 MiB / 16 MiB of dirtied pages (state + dirty log + page capture + encoding +
//!    zstd + atomic file write, exactly what the recorder does), and the restore time.
//! 2. Seek latency from a fresh timeline against the distance from the nearest trace
//!    checkpoint, at the start, middle and end of a short and a long trace (it must not
//!    grow with trace length), and reverse-stepi (seek(p - 1)) after a seek.

mod common;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{record_guest, timeline};
use ttvm_logs::CheckpointId;
use ttvm_recorder::checkpoints::CheckpointEvery;
use ttvm_vmm::machine::digest::RegSnapshot;
use ttvm_vmm::machine::snapshot::Snapshot;
use ttvm_vmm::run::live::LiveDriver;
use ttvm_vmm::run::singlestep::{BootFacts, HostValueKind, Position, StepDriver, Stop, TimeConfig};
use ttvm_vmm::{Machine, MachineConfig, RunEnd, SerialPoll, SerialSource};
use vm_memory::{Bytes, GuestAddress};

/// The live host, stopping at a target position.
struct StopAt(LiveDriver, Position);

impl StepDriver for StopAt {
    type Error = std::convert::Infallible;
    fn boot(&mut self) -> Result<BootFacts, Self::Error> {
        self.0.boot()
    }
    fn boundary(&mut self, pos: Position, m: &Machine) -> Result<Option<Stop>, Self::Error> {
        Ok((pos == self.1 && m.at_fresh_position()).then_some(Stop::Reached))
    }
    fn serial(&mut self, pos: Position, room: usize) -> Result<SerialPoll, Self::Error> {
        self.0.serial(pos, room)
    }
    fn inject_now(&mut self, p: Position, a: bool, b: bool, h: bool) -> Result<bool, Self::Error> {
        self.0.inject_now(p, a, b, h)
    }
    fn injected(&mut self, pos: Position, vector: u8) -> Result<(), Self::Error> {
        self.0.injected(pos, vector)
    }
    fn host_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
        v: u64,
    ) -> Result<(u64, bool), Self::Error> {
        self.0.host_value(pos, kind, v)
    }
    fn snapshot(&mut self, pos: Position, regs: &RegSnapshot) -> Result<(), Self::Error> {
        self.0.snapshot(pos, regs)
    }
    fn wait_for_input(&mut self, pos: Position) -> Result<(), Self::Error> {
        self.0.wait_for_input(pos)
    }
    fn idle(&mut self, pos: Position, d: u64, c: bool) -> Result<bool, Self::Error> {
        self.0.idle(pos, d, c)
    }
    fn end(&mut self, p: Position, e: &RunEnd, r: &RegSnapshot, d: u64) -> Result<(), Self::Error> {
        self.0.end(p, e, r, d)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes a checkpoint file like the recorder; returns (time, file bytes).
fn write(dir: &Path, id: u32, m: &mut Machine, full: bool) -> (Duration, u64, usize) {
    let t0 = Instant::now();
    let state = m.save_state(0).expect("state");
    let dirty = m.take_dirty_pages().expect("dirty");
    let pages = dirty.len();
    let memory = if full {
        m.capture_all_pages().expect("capture")
    } else {
        m.capture_pages(dirty).expect("capture")
    };
    let snap = Snapshot {
        state,
        parent: (!full).then_some(0),
        memory,
    };
    let bytes = snap.encode().expect("encode");
    let info =
        ttvm_logs::checkpoint::write_checkpoint(dir, CheckpointId(id), 0, &bytes).expect("write");
    (t0.elapsed(), info.disk_size, pages)
}

fn checkpoint_costs() {
    println!("## checkpoint time and size (guest `timer` stopped at position 3000)");
    println!("| RAM | kind | dirty pages | time ms | file bytes | restore ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let image = ttvm_guests::elf_bytes("timer").expect("guest");
    for mem in [64u64 << 20, 256 << 20] {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = MachineConfig {
            mem_bytes: mem,
            ..MachineConfig::default()
        };
        let mut m = Machine::new(config, image, Box::new(io::sink())).expect("machine");
        let mut d = StopAt(LiveDriver::new(SerialSource::None), 3000);
        m.begin_stepped(&mut d, TimeConfig::default())
            .expect("begin");
        m.continue_stepped(&mut d).expect("run");
        let (t, size, _) = write(tmp.path(), 0, &mut m, true);
        let saved = m.save_state(0).expect("state");
        let all = m.capture_all_pages().expect("all");
        let t0 = Instant::now();
        m.write_pages(all.pages.iter().map(|(&n, p)| (n, p)))
            .expect("restore");
        m.restore_state(&saved).expect("restore");
        let restore_full = t0.elapsed();
        println!(
            "| {} MiB | full | all non-zero | {:.2} | {size} | {:.2} |",
            mem >> 20,
            ms(t),
            ms(restore_full)
        );
        for dirty_mib in [0u64, 1, 16] {
            // Dirty pages in the upper half of RAM (a pattern per page, not zeros).
            let pages = dirty_mib * 256;
            for i in 0..pages {
                let gpa = mem / 2 + i * 4096;
                let fill = [(i as u8) | 1; 4096];
                m.memory()
                    .write_slice(&fill, GuestAddress(gpa))
                    .expect("fill");
                m.note_vmm_write(gpa, 4096);
            }
            let (t, size, n) = write(tmp.path(), 1 + dirty_mib as u32, &mut m, false);
            let delta = m.capture_pages((0..pages).map(|i| ((mem / 2) >> 12) as u32 + i as u32));
            let delta = delta.expect("delta");
            let t0 = Instant::now();
            m.write_pages(delta.pages.iter().map(|(&n, p)| (n, p)))
                .expect("restore");
            m.restore_state(&saved).expect("restore");
            println!(
                "| {} MiB | incremental | {n} ({dirty_mib} MiB) | {:.2} | {size} | {:.2} |",
                mem >> 20,
                ms(t),
                ms(t0.elapsed())
            );
        }
    }
}

fn record_trace(dir: &Path, cmdline: &str) -> (std::path::PathBuf, u64) {
    let trace = dir.join(cmdline.replace([' ', '='], "_"));
    let rec = record_guest("race", cmdline, &trace, CheckpointEvery::default());
    (trace, rec.steps)
}

fn seek_latency() {
    println!();
    println!("## seek latency (fresh timeline; trace checkpoints every 30000 positions)");
    println!("| trace (steps) | where | distance from checkpoint | seek ms | then reverse-stepi ms | open ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let tmp = tempfile::tempdir().expect("tmp");
    for cmdline in ["", "race.hz=100 race.jitter=5000"] {
        let (trace, steps) = record_trace(tmp.path(), cmdline);
        let ckpts = ttvm_logs::TraceReader::open(&trace)
            .expect("open")
            .checkpoints()
            .expect("list");
        let positions: Vec<u64> = std::iter::once(0)
            .chain(ckpts.iter().map(|c| c.position))
            .collect();
        let picks = [
            ("start", positions[0]),
            ("middle", positions[positions.len() / 2]),
            ("end", *positions.last().unwrap_or(&0)),
        ];
        for (label, base) in picks {
            for distance in [0u64, 1000, 10_000, 29_000] {
                let p = base + distance;
                if p >= steps {
                    continue;
                }
                let t0 = Instant::now();
                let mut t = timeline(&trace);
                let open = t0.elapsed();
                let t1 = Instant::now();
                t.seek(p).expect("seek");
                let seek = t1.elapsed();
                let t2 = Instant::now();
                if p > 0 {
                    t.seek(p - 1).expect("reverse-stepi");
                }
                let back = t2.elapsed();
                println!(
                    "| {steps} | {label} | {distance} | {:.1} | {:.1} | {:.1} |",
                    ms(seek),
                    ms(back),
                    ms(open)
                );
            }
        }
    }
}

fn main() {
    checkpoint_costs();
    seek_latency();
}
