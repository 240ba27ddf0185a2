//! The fallback against the host CPU's own results (the instructions run natively here at
//! CPL3 with random inputs), and delivery/IRET against the architecture's frame layouts.

use std::arch::asm;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::*;

/// Flat memory: linear address = offset, everything below `len` mapped.
struct Flat(Vec<u8>);

impl LinearMemory for Flat {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        let (start, end) = (linear as usize, linear as usize + buf.len());
        if end > self.0.len() {
            return false;
        }
        buf.copy_from_slice(&self.0[start..end]);
        true
    }
    fn write(&mut self, linear: u64, data: &[u8]) -> bool {
        let (start, end) = (linear as usize, linear as usize + data.len());
        if end > self.0.len() {
            return false;
        }
        self.0[start..end].copy_from_slice(data);
        true
    }
}

/// A tiny xorshift generator: reproducible random inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const CODE_SEG: u64 = 0x00af_9b00_0000_ffff; // 64-bit code, DPL 0, accessed
const DATA_SEG: u64 = 0x00cf_9300_0000_ffff;
const CODE32_SEG: u64 = 0x00cf_9b00_0000_ffff;

fn long_mode_cpu() -> (kvm_regs, kvm_sregs) {
    let mut sregs = kvm_sregs {
        cr0: 0x8000_0011,
        efer: 0x500,
        cs: descriptor_to_segment_for_test(0x8, CODE_SEG),
        ss: descriptor_to_segment_for_test(0x10, DATA_SEG),
        ..Default::default()
    };
    sregs.gdt.base = 0x1000;
    sregs.gdt.limit = 0x1f;
    sregs.idt.base = 0x2000;
    sregs.idt.limit = 0xfff;
    let regs = kvm_regs {
        rflags: 0x202,
        rsp: 0x8000,
        rip: 0x4000,
        ..Default::default()
    };
    (regs, sregs)
}

fn descriptor_to_segment_for_test(selector: u16, raw: u64) -> kvm_segment {
    delivery::descriptor_to_segment(selector, raw)
}

fn memory_with_tables(long: bool) -> Flat {
    let mut mem = Flat(vec![0; 0x10000]);
    let gdt = [0, if long { CODE_SEG } else { CODE32_SEG }, DATA_SEG];
    for (i, d) in gdt.iter().enumerate() {
        mem.write(0x1000 + 8 * i as u64, &d.to_le_bytes());
    }
    // Gates for vectors 0..32 and 0x80: handler at 0x5000 + vector * 0x10.
    for v in (0..32u64).chain([0x80]) {
        let handler = 0x5000 + v * 0x10;
        let kind: u8 = if v == 3 || v == 0x80 { 0xef } else { 0x8e };
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&8u16.to_le_bytes());
        gate[5] = kind;
        gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        let size = if long { 16 } else { 8 };
        mem.write(0x2000 + v * size, &gate[..size as usize]);
    }
    mem
}

fn run(
    bytes: &[u8],
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
    mem: &mut Flat,
) -> Result<Executed, FallbackError> {
    let mut cpu = Cpu {
        regs,
        sregs,
        fpu_status: 0,
    };
    execute(bytes, &mut cpu, mem)
}

const ARITH_FLAGS: u64 = 0x8d5;

#[test]
fn popcnt_matches_the_host_cpu() {
    if !std::is_x86_feature_detected!("popcnt") {
        eprintln!("SKIPPED: this CPU has no popcnt");
        return;
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut mem = Flat(vec![0; 0x10000]);
    for i in 0..2000 {
        let src = match i {
            0 => 0,
            1 => u64::MAX,
            _ => rng.next() >> (rng.next() % 64),
        };
        let flags_in = rng.next() & ARITH_FLAGS | 0x202;
        let (host, host_flags): (u64, u64);
        // SAFETY: popcnt on registers and pushf/popf of the flags only; no memory is touched
        // beyond the stack slot pushf/pop use.
        unsafe {
            asm!("push {f}", "popfq", "popcnt {d}, {s}", "pushfq", "pop {f}",
                 s = in(reg) src, d = out(reg) host, f = inout(reg) flags_in => host_flags);
        }
        let (mut regs, mut sregs) = long_mode_cpu();
        regs.rbx = src;
        regs.rflags = flags_in;
        regs.rax = rng.next();
        // popcnt rax, rbx (64), then popcnt eax, ebx (32) from the same start.
        run(
            &[0xf3, 0x48, 0x0f, 0xb8, 0xc3],
            &mut regs,
            &mut sregs,
            &mut mem,
        )
        .unwrap();
        assert_eq!(regs.rax, host, "popcnt of {src:#x}");
        assert_eq!(
            regs.rflags & ARITH_FLAGS,
            host_flags & ARITH_FLAGS,
            "flags for {src:#x}"
        );
        assert_eq!(regs.rip, 0x4005);
        let host32: u64;
        // SAFETY: as above, registers only.
        unsafe { asm!("popcnt {d:e}, {s:e}", s = in(reg) src, d = out(reg) host32) };
        regs.rip = 0x4000;
        regs.rax = u64::MAX;
        run(&[0xf3, 0x0f, 0xb8, 0xc3], &mut regs, &mut sregs, &mut mem).unwrap();
        assert_eq!(regs.rax, host32, "32-bit popcnt zero-extends");
    }
    // A memory source: popcnt rax, [rbx+8].
    let (mut regs, mut sregs) = long_mode_cpu();
    mem.write(0x3008, &0xf0f0u64.to_le_bytes());
    regs.rbx = 0x3000;
    run(
        &[0xf3, 0x48, 0x0f, 0xb8, 0x43, 0x08],
        &mut regs,
        &mut sregs,
        &mut mem,
    )
    .unwrap();
    assert_eq!(regs.rax, 8);
}

#[test]
fn cmpxchg16b_matches_the_host_cpu() {
    if !std::is_x86_feature_detected!("cmpxchg16b") {
        eprintln!("SKIPPED: this CPU has no cmpxchg16b");
        return;
    }
    #[repr(align(16))]
    struct Slot([u64; 2]);
    let mut rng = Rng(0xfeed_beef_1234_5678);
    for i in 0..500 {
        let old = [rng.next(), rng.next()];
        let expect = if i % 2 == 0 {
            old
        } else {
            [rng.next(), old[1]]
        };
        let new = [rng.next(), rng.next()];
        let mut slot = Slot(old);
        let (mut rax, mut rdx, flags): (u64, u64, u64);
        // SAFETY: cmpxchg16b on `slot`, a live 16-byte-aligned local; rbx is saved and
        // restored around it (LLVM reserves it).
        unsafe {
            asm!("xchg {b}, rbx", "lock cmpxchg16b [{p}]", "pushfq", "pop {f}", "xchg {b}, rbx",
                 b = inout(reg) new[0] => _, p = in(reg) slot.0.as_mut_ptr(), f = out(reg) flags,
                 inout("rax") expect[0] => rax, inout("rdx") expect[1] => rdx, in("rcx") new[1]);
        }
        let mut mem = Flat(vec![0; 0x10000]);
        mem.write(0x3000, &old[0].to_le_bytes());
        mem.write(0x3008, &old[1].to_le_bytes());
        let (mut regs, mut sregs) = long_mode_cpu();
        (regs.rax, regs.rdx, regs.rbx, regs.rcx, regs.rsi) =
            (expect[0], expect[1], new[0], new[1], 0x3000);
        // lock cmpxchg16b [rsi]
        run(
            &[0xf0, 0x48, 0x0f, 0xc7, 0x0e],
            &mut regs,
            &mut sregs,
            &mut mem,
        )
        .unwrap();
        let mut after = [0u8; 16];
        mem.read(0x3000, &mut after);
        assert_eq!(after[..8], slot.0[0].to_le_bytes());
        assert_eq!(after[8..], slot.0[1].to_le_bytes());
        assert_eq!((regs.rax, regs.rdx), (rax, rdx));
        assert_eq!(
            regs.rflags & ARITH_FLAGS,
            flags & ARITH_FLAGS & 0x40 | regs.rflags & ARITH_FLAGS & !0x40
        );
        assert_eq!(regs.rflags & 0x40, flags & 0x40, "ZF");
        assert_eq!(regs.rip, 0x4005);
    }
    // Misaligned: #GP(0) through the IDT.
    let mut mem = memory_with_tables(true);
    let (mut regs, mut sregs) = long_mode_cpu();
    regs.rsi = 0x3008;
    run(
        &[0xf0, 0x48, 0x0f, 0xc7, 0x0e],
        &mut regs,
        &mut sregs,
        &mut mem,
    )
    .unwrap();
    assert_eq!(regs.rip, 0x5000 + 13 * 0x10);
    let mut frame = [0u8; 8];
    mem.read(regs.rsp, &mut frame);
    assert_eq!(u64::from_le_bytes(frame), 0, "error code");
}

#[test]
fn clac_stac_fences_and_fwait() {
    let mut mem = memory_with_tables(true);
    let (mut regs, mut sregs) = long_mode_cpu();
    regs.rflags |= RFLAGS_AC;
    run(&[0x0f, 0x01, 0xca], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!((regs.rflags & RFLAGS_AC, regs.rip), (0, 0x4003));
    run(&[0x0f, 0x01, 0xcb], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!((regs.rflags & RFLAGS_AC, regs.rip), (RFLAGS_AC, 0x4006));
    for fence in [[0x0f, 0xae, 0xe8], [0x0f, 0xae, 0xf0], [0x0f, 0xae, 0xf8]] {
        let rip = regs.rip;
        run(&fence, &mut regs, &mut sregs, &mut mem).unwrap();
        assert_eq!(regs.rip, rip + 3);
    }
    // fwait: nothing pending goes on; TS+MP raises #NM; a pending x87 exception #MF.
    let rip = regs.rip;
    run(&[0x9b], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(regs.rip, rip + 1);
    sregs.cr0 |= CR0_MP | CR0_TS;
    run(&[0x9b], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(regs.rip, 0x5000 + 7 * 0x10);
    let mut cpu_regs = long_mode_cpu();
    let mut cpu = Cpu {
        regs: &mut cpu_regs.0,
        sregs: &mut cpu_regs.1,
        fpu_status: FSW_ES,
    };
    execute(&[0x9b], &mut cpu, &mut mem).unwrap();
    assert_eq!(cpu.regs.rip, 0x5000 + 16 * 0x10);
    // clac at CPL3: #UD.
    let (mut regs, mut sregs) = long_mode_cpu();
    sregs.cs.dpl = 3;
    sregs.tr.base = 0x6000;
    mem.write(0x6004, &0x9000u64.to_le_bytes());
    run(&[0x0f, 0x01, 0xca], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(
        (regs.rip, sregs.cs.dpl, regs.rsp),
        (0x5000 + 6 * 0x10, 0, 0x9000 - 40)
    );
}

#[test]
fn int3_and_iretq_round_trip_in_long_mode() {
    let mut mem = memory_with_tables(true);
    let (mut regs, mut sregs) = long_mode_cpu();
    regs.rsp = 0x8008; // not 16-byte aligned: the CPU aligns the frame
    let before = (regs, sregs);
    run(&[0xcc], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(regs.rip, 0x5030);
    assert_eq!(regs.rsp, 0x8000 - 40);
    assert_eq!(
        regs.rflags & RFLAGS_IF_TEST,
        RFLAGS_IF_TEST,
        "a trap gate keeps IF"
    );
    let mut frame = [0u8; 40];
    mem.read(regs.rsp, &mut frame);
    let word = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(
        [word(0), word(1), word(2), word(3), word(4)],
        [0x4001, 0x8, 0x202, 0x8008, 0x10]
    );
    // iretq from the int3 handler returns to the instruction after it, same stack.
    regs.rip = 0x5030;
    run(&[0x48, 0xcf], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x4001, 0x8008, 0x202));
    assert_eq!(sregs.cs.selector, 8);
    // Vector 14 has an interrupt gate: `int 14` clears IF (int3's trap gate kept it).
    let (mut r2, mut s2) = before;
    run(&[0xcd, 0x0e], &mut r2, &mut s2, &mut mem).unwrap();
    assert_eq!(
        (r2.rip, r2.rflags & RFLAGS_IF_TEST),
        (0x5000 + 14 * 0x10, 0)
    );
}

const RFLAGS_IF_TEST: u64 = 1 << 9;

#[test]
fn ud2_raises_ud_at_the_instruction() {
    let mut mem = memory_with_tables(true);
    let (mut regs, mut sregs) = long_mode_cpu();
    regs.rsp = 0x8000;
    run(&[0x0f, 0x0b], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(regs.rip, 0x5000 + 6 * 0x10);
    let mut saved_rip = [0u8; 8];
    mem.read(regs.rsp, &mut saved_rip);
    assert_eq!(
        u64::from_le_bytes(saved_rip),
        0x4000,
        "a fault saves the faulting RIP (Linux's WARN handler skips the UD2 itself)"
    );
    assert_eq!(
        regs.rflags & RFLAGS_IF_TEST,
        0,
        "vector 6 has an interrupt gate"
    );
}

#[test]
fn int_and_iret_round_trip_in_32_bit_protected_mode() {
    let mut mem = memory_with_tables(false);
    let mut sregs = kvm_sregs {
        cr0: 0x11,
        cs: descriptor_to_segment_for_test(0x8, CODE32_SEG),
        ss: descriptor_to_segment_for_test(0x10, DATA_SEG),
        ..Default::default()
    };
    sregs.gdt.base = 0x1000;
    sregs.gdt.limit = 0x1f;
    sregs.idt.base = 0x2000;
    sregs.idt.limit = 0x7ff;
    let mut regs = kvm_regs {
        rflags: 0x246,
        rsp: 0x8000,
        rip: 0x4000,
        ..Default::default()
    };
    run(&[0xcd, 0x0e], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!(
        (regs.rip, regs.rsp, regs.rflags & RFLAGS_IF_TEST),
        (0x5000 + 14 * 0x10, 0x8000 - 12, 0)
    );
    let mut frame = [0u8; 12];
    mem.read(regs.rsp, &mut frame);
    let word = |i: usize| u32::from_le_bytes(frame[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!([word(0), word(1), word(2)], [0x4002, 0x8, 0x246]);
    // The 32-bit iret (cf) that this host's KVM cannot run.
    run(&[0xcf], &mut regs, &mut sregs, &mut mem).unwrap();
    assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x4002, 0x8000, 0x246));
}

#[test]
fn what_is_not_supported_says_so() {
    let mut mem = Flat(vec![0; 0x10000]);
    let (mut regs, mut sregs) = long_mode_cpu();
    let e = run(&[0x0f, 0xae, 0x2f], &mut regs, &mut sregs, &mut mem).unwrap_err();
    assert!(e.to_string().contains("noxsave"), "{e}");
    let e = run(&[0x0f], &mut regs, &mut sregs, &mut mem).unwrap_err();
    assert!(matches!(e, FallbackError::Undecodable { .. }));
    // A gate beyond the IDT limit.
    sregs.idt.limit = 0xf;
    let e = run(&[0xcc], &mut regs, &mut sregs, &mut mem).unwrap_err();
    assert!(e.to_string().contains("IDT limit"), "{e}");
    assert_eq!(regs.rip, 0x4000, "nothing changes on an error");
}
