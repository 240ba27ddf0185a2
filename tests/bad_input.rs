//! Bad input gets a clear error and a documented exit code, never a panic.

mod common;

use common::*;
use std::process::Output;
use ttvm_vmm::machine::elf_image::{testing::tiny_elf, ElfClass};

const VMM_ERROR: i32 = 120;
const USAGE: i32 = 2;

fn assert_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_file() {
    let o = run(&["run", "/nonexistent/guest.elf"]);
    assert_error(&o, VMM_ERROR, "no such file");
}

#[test]
fn not_an_elf() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.elf");
    std::fs::write(&f, b"#!/bin/sh\necho hi\n").unwrap();
    let o = run(&["run", f.to_str().unwrap()]);
    assert_error(&o, VMM_ERROR, "not an ELF file");
}

#[test]
fn a_compressed_linux_kernel_is_named_and_the_way_out_given() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vmlinuz");
    // A bzImage: a DOS stub, then the boot protocol's "HdrS" at 0x202.
    let mut image = vec![0u8; 0x1000];
    image[..2].copy_from_slice(b"MZ");
    image[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&f, image).unwrap();
    for cmd in ["run", "record"] {
        let o = run(&[cmd, f.to_str().unwrap()]);
        assert_error(&o, VMM_ERROR, "compressed Linux kernel (bzImage");
        assert_error(&o, VMM_ERROR, "extract-vmlinux");
        // No clock note before the error: the image is checked first.
        assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));
    }
}

#[test]
fn elf_without_pvh_note() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("nonote.elf");
    std::fs::write(&f, tiny_elf(ElfClass::Elf64, false, 16)).unwrap();
    let o = run(&["run", f.to_str().unwrap()]);
    assert_error(&o, VMM_ERROR, "no PVH entry point");
    // A host executable is an ELF without the note too.
    let o = run(&["run", "/bin/true"]);
    assert_error(&o, VMM_ERROR, "no PVH entry point");
}

#[test]
fn image_larger_than_memory() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.elf");
    std::fs::write(&f, tiny_elf(ElfClass::Elf32, true, 100 << 20)).unwrap();
    let o = run(&["run", "--mem", "64M", f.to_str().unwrap()]);
    assert_error(&o, VMM_ERROR, "does not fit in guest memory");
}

#[test]
fn malformed_and_out_of_range_mem() {
    let g = guest("hello");
    for (mem, needle) in [
        ("64X", "is not a size"),
        ("lots", "is not a size"),
        ("1M", "too small"),
        ("8G", "too large"),
    ] {
        let o = run(&["run", "--mem", mem, g.to_str().unwrap()]);
        assert_error(&o, USAGE, needle);
    }
}

#[test]
fn missing_kvm_device_says_what_to_do() {
    let o = ttvm()
        .env("TTVM_KVM_DEVICE", "/nonexistent/kvm")
        .args(["run", guest("hello").to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(&o, VMM_ERROR, "modprobe kvm_intel");
}

#[test]
fn a_kvm_device_that_is_not_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("kvm");
    std::fs::write(&fake, b"").unwrap();
    let o = ttvm()
        .env("TTVM_KVM_DEVICE", &fake)
        .args(["run", guest("hello").to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(&o, VMM_ERROR, "is not a KVM device");
}

#[test]
fn inaccessible_kvm_device() {
    // Root bypasses file permissions, so use a directory: opening it read-write fails
    // with EISDIR, which must still be a clear error naming the path.
    let dir = tempfile::tempdir().unwrap();
    let o = ttvm()
        .env("TTVM_KVM_DEVICE", dir.path())
        .args(["run", guest("hello").to_str().unwrap()])
        .output()
        .unwrap();
    assert_error(
        &o,
        VMM_ERROR,
        &format!("cannot open {}", dir.path().display()),
    );
}

#[test]
fn unreadable_serial_input() {
    let o = run(&[
        "run",
        "--serial-in",
        "/nonexistent/input",
        guest("echo").to_str().unwrap(),
    ]);
    assert_error(&o, VMM_ERROR, "cannot open --serial-in");
}

/// The program headers of an ELF64 image: (offset of the entry, p_type).
fn program_headers(image: &[u8]) -> Vec<(usize, u32)> {
    let u16_at = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(image[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            (
                at,
                u32::from_le_bytes(image[at..at + 4].try_into().unwrap()),
            )
        })
        .collect()
}

/// Writes the hello guest, changed by `edit`, to `dir/name` and runs it.
fn run_edited_hello(dir: &std::path::Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Output {
    let mut image = std::fs::read(guest("hello")).unwrap();
    edit(&mut image);
    let f = dir.join(name);
    std::fs::write(&f, image).unwrap();
    run(&["run", f.to_str().unwrap()])
}

#[test]
fn damaged_segments_and_pvh_notes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The data segment with p_memsz 0 (p_filesz unchanged): its bytes would be dropped.
    let o = run_edited_hello(dir.path(), "memsz.elf", |image| {
        let (at, _) = program_headers(image)
            .into_iter()
            .filter(|&(_, t)| t == 1)
            .nth(1)
            .expect("two PT_LOAD segments");
        image[at + 40..at + 48].copy_from_slice(&0u64.to_le_bytes());
    });
    assert_error(
        &o,
        VMM_ERROR,
        "a segment's file size exceeds its memory size",
    );
    // The PVH note's 8-byte entry address with a high half.
    let o = run_edited_hello(dir.path(), "note.elf", |image| {
        let (at, _) = program_headers(image)
            .into_iter()
            .find(|&(_, t)| t == 4)
            .expect("a PT_NOTE segment");
        let note = u64::from_le_bytes(image[at + 8..at + 16].try_into().unwrap()) as usize;
        assert_eq!(&image[note + 12..note + 16], b"Xen\0");
        image[note + 20] = 1;
    });
    assert_error(
        &o,
        VMM_ERROR,
        "the guest image's PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) is corrupted: its entry address does not fit in 32 bits",
    );
}

/// Records the hello guest into `dir`.
fn record_hello(dir: &std::path::Path) {
    let o = run(&[
        "record",
        "-o",
        dir.to_str().unwrap(),
        guest("hello").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn dump_from_past_the_end_is_a_request_error_not_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t");
    record_hello(&trace);
    let o = run(&["dump", trace.to_str().unwrap(), "--json"]);
    let events = stdout(&o).lines().count() - 1; // the last line is the summary
    let o = run(&["dump", trace.to_str().unwrap(), "--from", "100000"]);
    assert_error(
        &o,
        VMM_ERROR,
        &format!(
            "ttvm dump: --from 100000 is past the end: {} has {events} events",
            trace.display()
        ),
    );
    // At the end exactly: nothing to print, no error.
    let o = run(&[
        "dump",
        trace.to_str().unwrap(),
        "--from",
        &events.to_string(),
    ]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), ""));
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t");
    record_hello(&trace);
    let o = run(&[
        "export",
        trace.to_str().unwrap(),
        "-o",
        "/nonexistent-dir/x.ttvm",
    ]);
    assert_error(&o, VMM_ERROR, "cannot create /nonexistent-dir/");
    assert_eq!(
        stderr(&o).matches("(os error 2)").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn archive_trace_names_the_longest_and_option_like() {
    let tmp = tempfile::tempdir().unwrap();
    let long = tmp.path().join("src").join("n".repeat(255));
    record_hello(&long);
    let export = |trace: &std::path::Path, name: &str| {
        let file = tmp.path().join(name);
        let o = run(&[
            "export",
            trace.to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        file
    };
    let file = export(&long, "long.ttvm");
    let root = tmp.path().join("root");
    let import = |file: &std::path::Path| {
        ttvm()
            .env("TTVM_TRACE_DIR", &root)
            .args(["import", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = import(&file);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        root.join("n".repeat(255)).to_str().unwrap()
    );
    // A trace named like an option is refused: `ttvm replay -o` would not name it.
    let dash = tmp.path().join("src/-o");
    std::fs::rename(&long, &dash).unwrap();
    let o = import(&export(&dash, "dash.ttvm"));
    assert_error(&o, 3, "unusable trace name \"-o\"");
    assert!(!root.join("-o").exists());
}
