//! Builds the C/asm test guests with the machine's gcc (or `$CC`) into
//! `$OUT_DIR/<name>.elf`: static ELF64 x86-64 images at physical 1 MiB,
//! entered through the 32-bit PVH entry point of the shared runtime, and
//! static ELF32 i386 images (`c32/`) that stay in 32-bit protected mode.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every guest: `c/<name>.c`, linked with the runtime.  Keep in sync with
/// `NAMES` in src/lib.rs (a unit test checks).
const GUESTS: &[&str] = &[
    "hello", "timer", "echo", "entropy", "crash", "race", "rtc", "fences", "faults",
];

/// The 32-bit guests: `c32/<name>.c`, linked with `runtime32/`.
const GUESTS32: &[&str] = &["hello32"];

const RUNTIME_SOURCES: &[&str] = &["runtime/entry.S", "runtime/rt.c"];
const RUNTIME32_SOURCES: &[&str] = &["runtime32/entry32.S"];
const LINKER_SCRIPT32: &str = "guest32.ld";
const RUNTIME_HEADERS: &[&str] = &["runtime/rt.h"];
const LINKER_SCRIPT: &str = "guest.ld";

/// Flags for every compilation: no SSE/x87/MMX and nothing else the VMM's
/// instruction emulator does not handle; debug info and frame pointers so
/// gdb shows readable backtraces and source lines.
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-mno-popcnt",
    "-mno-red-zone",
    "-fcf-protection=none",
    "-fno-stack-protector",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-nostdlib",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-jump-tables",
    "-Wall",
    "-Wextra",
    "-Werror",
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    println!("cargo:rerun-if-env-changed=CC");
    for f in RUNTIME_SOURCES
        .iter()
        .chain(RUNTIME_HEADERS)
        .chain(RUNTIME32_SOURCES)
        .chain(&[LINKER_SCRIPT, LINKER_SCRIPT32])
    {
        println!("cargo:rerun-if-changed={}", manifest.join(f).display());
    }

    let runtime: Vec<PathBuf> = RUNTIME_SOURCES.iter().map(|s| manifest.join(s)).collect();
    for name in GUESTS {
        let src = manifest.join("c").join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let elf = out.join(format!("{name}.elf"));
        build_guest(&cc, &manifest, &runtime, &src, &elf, Bits::B64);
    }
    let runtime32: Vec<PathBuf> = RUNTIME32_SOURCES.iter().map(|s| manifest.join(s)).collect();
    for name in GUESTS32 {
        let src = manifest.join("c32").join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let elf = out.join(format!("{name}.elf"));
        build_guest(&cc, &manifest, &runtime32, &src, &elf, Bits::B32);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bits {
    B32,
    B64,
}

fn build_guest(cc: &str, manifest: &Path, runtime: &[PathBuf], src: &Path, elf: &Path, bits: Bits) {
    let mut cmd = Command::new(cc);
    let (mode, script) = match bits {
        Bits::B64 => ("-m64", LINKER_SCRIPT),
        Bits::B32 => ("-m32", LINKER_SCRIPT32),
    };
    // -mno-red-zone only means something in 64-bit code.
    cmd.arg(mode)
        .args(
            CFLAGS
                .iter()
                .filter(|f| bits == Bits::B64 || **f != "-mno-red-zone"),
        )
        .arg("-I")
        .arg(manifest.join("runtime"))
        .arg("-static")
        .arg("-T")
        .arg(manifest.join(script))
        .arg("-Wl,--build-id=none")
        .arg("-Wl,-z,noexecstack")
        .arg("-Wl,-z,max-page-size=4096")
        .arg("-o")
        .arg(elf)
        .args(runtime)
        .arg(src);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cc}` ({e}); install gcc or set $CC"));
    // Let warnings show up in cargo's build-script output.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        panic!(
            "building guest {} failed ({}):\n{:?}\n{}",
            src.display(),
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
