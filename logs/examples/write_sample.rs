//! Writes a small sample trace into the trace root (or `-o DIR` given as the first
//! argument): `cargo run -p ttvm-logs --example write_sample [DIR] [--unfinished]`.
//! Handy for trying `ttvm ls` / `ttvm dump` without KVM.
use std::time::Duration;
use ttvm_logs::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unfinished = args.iter().any(|a| a == "--unfinished");
    let location = match args.iter().find(|a| !a.starts_with("--")) {
        Some(dir) => TraceLocation::Exact(dir.into()),
        None => TraceLocation::default_root()?,
    };
    let meta = TraceMeta {
        guest_name: "sample".into(),
        ttvm_version: env!("CARGO_PKG_VERSION").into(),
        machine: MachineConfig {
            mem_bytes: 64 << 20,
            cmdline: "console=ttyS0".into(),
            cpuid: Vec::new(),
        },
        clock: ClockInfo {
            semantics: "guest instructions retired (single-step count)".into(),
            params: Default::default(),
        },
        host: HostInfo::detect(),
        guest_image_name: "sample.elf".into(),
    };
    let mut w = TraceWriter::create(&location, &meta, b"\x7fELF sample image")?;
    let mut position = 0;
    for i in 0..5000u64 {
        position += 997 + i % 7;
        w.push(EventRecord {
            position,
            event: Event::Interrupt { vector: 0x20 },
        })?;
        if i % 100 == 0 {
            w.push(EventRecord {
                position,
                event: Event::HostTime {
                    nanos: position * 3,
                },
            })?;
        }
        if i == 2500 {
            w.push(EventRecord {
                position,
                event: Event::SerialInput {
                    bytes: b"hi\n".to_vec(),
                },
            })?;
        }
    }
    if unfinished {
        w.flush()?;
        println!("{}", w.dir().display());
        std::process::exit(0); // no finish: the trace stays incomplete
    }
    let summary = w.finish(CloseInfo {
        end_reason: EndReason::GuestExit { status: 0 },
        final_position: position + 5,
        duration: Duration::from_millis(250),
        counters: Default::default(),
    })?;
    println!("{}", summary.dir.display());
    Ok(())
}
