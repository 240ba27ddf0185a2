//! Builds the C/asm test guests with the machine's gcc (or `$CC`) into
//! `$OUT_DIR/<name>.elf`: static ELF64 x86-64 images at physical 1 MiB,
//! entered through the 32-bit PVH entry point of the shared runtime.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every guest: `c/<name>.c`, linked with the runtime.  Keep in sync with
/// `NAMES` in src/lib.rs (a unit test checks).
const GUESTS: &[&str] = &["hello", "timer", "echo", "entropy", "crash", "race"];

const RUNTIME_SOURCES: &[&str] = &["runtime/entry.S", "runtime/rt.c"];
const RUNTIME_HEADERS: &[&str] = &["runtime/rt.h"];
const LINKER_SCRIPT: &str = "guest.ld";

/// Flags for every compilation: no SSE/x87/MMX and nothing else the VMM's
/// instruction emulator does not handle; debug info and frame pointers so
/// gdb shows readable backtraces and source lines.
const CFLAGS: &[&str] = &[
    "-m64",
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
        .chain(&[LINKER_SCRIPT])
    {
        println!("cargo:rerun-if-changed={}", manifest.join(f).display());
    }

    let runtime: Vec<PathBuf> = RUNTIME_SOURCES.iter().map(|s| manifest.join(s)).collect();
    for name in GUESTS {
        let src = manifest.join("c").join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let elf = out.join(format!("{name}.elf"));
        build_guest(&cc, &manifest, &runtime, &src, &elf);
    }
}

fn build_guest(cc: &str, manifest: &Path, runtime: &[PathBuf], src: &Path, elf: &Path) {
    let mut cmd = Command::new(cc);
    cmd.args(CFLAGS)
        .arg("-I")
        .arg(manifest.join("runtime"))
        .arg("-static")
        .arg("-T")
        .arg(manifest.join(LINKER_SCRIPT))
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
