//! Bad input gets a clear error and a documented exit code, never a panic.

mod common;

use common::*;
use ttvm_vmm::elf_image::{testing::tiny_elf, ElfClass};

const VMM_ERROR: i32 = 120;
const USAGE: i32 = 2;

fn assert_error(o: &std::process::Output, code: i32, needle: &str) {
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
