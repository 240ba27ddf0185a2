//! Small PVH test guests for ttvm's VMM, built from C + asm by `build.rs`
//! with the machine's gcc.
//!
//! Every guest but `hello32` (ELF32 i386, see [`HELLO32`]) is a static ELF64
//! x86-64 image linked at physical 1 MiB, with
//! a `XEN_ELFNOTE_PHYS32_ENTRY` note (type 18, name "Xen") in a `PT_NOTE`
//! segment naming its 32-bit entry point.  The shared runtime
//! (`runtime/entry.S`, `runtime/rt.c`) switches to long mode, sets up COM1
//! (115200 8N1, FIFO on), an IDT with all 256 gates, the two 8259A PICs
//! (vectors 0x20-0x2f, all masked) and calls the guest's `main`.  Guests end
//! by writing their exit status to the debug-exit port 0xf4.
//!
//! Conventions every guest follows (the VMM's tests assert them byte for
//! byte):
//! * serial lines end in a bare `\n` (no `\r`);
//! * a CPU exception (vectors 0-31) prints
//!   `exception N at RIP 0x... error code 0x...` and exits with 0x7f;
//!   an interrupt on a vector >= 0x30 prints
//!   `unexpected interrupt vector N at RIP 0x...` and exits with 0x7e;
//!   an unregistered IRQ 0-15 prints `spurious irq N` and continues;
//! * a bad `hvm_start_info` magic prints
//!   `bad hvm_start_info magic 0x...` and exits with 0x7f.
//!
//! The guests are also bootable unchanged with QEMU:
//! `qemu-system-x86_64 -M pc -accel tcg -m 64M -display none -nodefaults
//! -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04
//! -kernel hello.elf -append 'foo=bar'` (QEMU's exit status is then
//! `(status << 1) | 1`). Use `-display none`, not `-nographic`: with
//! `-nographic` SeaBIOS prints a banner on the serial port and its serial
//! console swallows early input bytes.

use std::path::PathBuf;

/// Names of all guests, in build order.
pub const NAMES: &[&str] = &[
    HELLO, TIMER, ECHO, ENTROPY, CRASH, RACE, RTC, FENCES, FAULTS, HELLO32,
];

/// `hello`: prints, then exits with status **0**:
///
/// ```text
/// hello from ttvm
/// cmdline: <the PVH command line, or "(none)" if absent or empty>
/// memory: <N> KiB
/// ```
///
/// N is the sum of the sizes of the type-1 (RAM) entries of the PVH memory
/// map, divided by 1024 (rounded down). If the start info has no memory map
/// (version 0 or `memmap_paddr` 0) the last line is
/// `memory: (no memory map)`. Under QEMU `-m 64M`: `memory: 65023 KiB`.
pub const HELLO: &str = "hello";

/// `timer`: PIT channel 0 at 1000 Hz (mode 2, divisor 1193); the IRQ0
/// handler counts ticks and keeps a checksum, and masks IRQ0 after exactly
/// 10 ticks; the main loop sleeps with `sti; hlt` and checks the handler's
/// state. Prints, then exits with status **10** (the ticks observed):
///
/// ```text
/// timer: PIT at 1000 Hz, waiting for 10 ticks
/// timer: 10 ticks, handler state consistent
/// ```
///
/// On inconsistency the second line is `timer: INCONSISTENT: ...` and the
/// status is 1.
pub const TIMER: &str = "timer";

/// `echo`: upper-cases (ASCII a-z) and echoes bytes read from COM1: the
/// first line by polling LSR, the rest by RX interrupt (IRQ4) into a ring
/// buffer; a 100 Hz PIT tick wakes the idle loop. Input ends with an EOT
/// byte (0x04; neither echoed nor counted) or when the carrier drops (MSR
/// bit 7 low) with no byte pending. For input `hello\nworld\n` it prints,
/// then exits with status **0**:
///
/// ```text
/// echo: ready
/// HELLO
/// WORLD
/// echo: 12 bytes
/// ```
///
/// N in `echo: N bytes` counts every byte echoed (newlines included). If
/// the input does not end in `\n`, a `\n` is printed before that line;
/// empty input gives `echo: ready\necho: 0 bytes\n`. About 150
/// instructions per input byte: keep inputs to a few hundred bytes.
pub const ECHO: &str = "echo";

/// `entropy`: reads each nondeterministic input once and exits with status
/// **0**. The values change from run to run (and must replay identically);
/// the format is fixed:
///
/// ```text
/// entropy: reading nondeterministic inputs
/// tsc: 0x<hex, no leading zeros>
/// rdrand: 0x<hex>            (or `rdrand: unsupported` if CPUID.1:ECX[30]
///                             is clear, `rdrand: failed` after 10 tries)
/// rtc: YYYY-MM-DD HH:MM:SS    (CMOS clock, year 2000 + register 9)
/// pit: <0-65535>              (channel 0 latched, decimal)
/// ```
pub const ENTROPY: &str = "entropy";

/// `crash`: prints `crash: about to triple fault\n`, loads an IDT with
/// limit 0 and divides by zero: #DE -> #GP -> #DF -> triple fault
/// (shutdown). Nothing is printed after that line and the debug-exit port
/// is never written, so there is no exit status: the VMM must report a
/// triple fault / shutdown.
pub const CRASH: &str = "crash";

/// `race`: the main loop pushes onto `shared` (a `struct item_stack`:
/// `count`, `items[16]`) without masking interrupts while the timer handler
/// `timer_tick()` pops and poisons the freed slot. Usually prints, then
/// exits with status **0**:
///
/// ```text
/// race: 20 ticks at 1000 Hz, window 8
/// race: 20 ticks, no corruption
/// ```
///
/// When a tick lands inside `push_item()`'s window, it prints (after the
/// first line) `PANIC: race: items[K] corrupted (0xdeaddead)` and exits with
/// status **3**. The command line may set `race.hz=N`, `race.window=N`,
/// `race.jitter=N` (defaults 1000, 8, 64) to make failures likely; the first
/// line shows the values used.
pub const RACE: &str = "race";

/// `rtc`: the CMOS RTC's interrupts (IRQ8 through the slave PIC): the
/// periodic interrupt at 64 Hz (status A rate select 10) for 8 ticks, then one
/// update-ended interrupt; the handler reads status C to find the cause and
/// acknowledge. Prints, then exits with status **0** (1 if status C's flags
/// did not match what was enabled):
///
/// ```text
/// rtc: periodic interrupt at 64 Hz, waiting for 8 ticks
/// rtc: 8 periodic ticks, then an update-ended interrupt
/// ```
pub const RTC: &str = "rtc";

/// `fences`: time-stamp reads right after `lfence`, `mfence`, `sfence` and
/// `rdrand` (instructions some KVMs run together with the next one in one
/// single step, so the RDTSC would run unseen), and RDTSCP, each compared
/// with a plain RDTSC just before it. Exits with status **0** (1 if a delta
/// exceeds 1,000,000 ticks: a read of the host's TSC):
///
/// ```text
/// fences: time-stamp reads after fences
/// lfence;rdtsc: +<ticks>
/// mfence;rdtsc: +<ticks>
/// sfence;rdtsc: +<ticks>
/// rdrand;rdtsc: +<ticks>      (or `rdrand;rdtsc: unsupported`)
/// rdtscp: +<ticks>            (or `rdtscp: unsupported`)
/// fences: ok
/// ```
pub const FENCES: &str = "fences";

/// `faults`: time-stamp reads inside exception handlers that return (#DE, #BP, #UD, #GP,
/// #PF), each compared with a read just before the fault; exits with status **0**:
///
/// ```text
/// faults: time-stamp reads in exception handlers
/// #DE: +<ticks>
/// #BP: +<ticks>
/// #UD: +<ticks>
/// #GP: +<ticks>               (or `#GP: no fault here`)
/// #PF: +<ticks>
/// faults: ok
/// ```
///
/// A KVM that single-steps with the guest's trap flag loses it when the CPU delivers an
/// exception; a handler that then ran unseen would read the host's TSC (a delta above
/// 1,000,000 ticks: `faults: FAIL ...`, status 1).
pub const FAULTS: &str = "faults";

/// `hello32`: a static ELF32 i386 image that stays in 32-bit protected mode
/// (no paging, no long mode; its own runtime in `runtime32/`, no IDT). It
/// fills `path[k] = {k, k*k}` for k in 0..8 through `visit(k)`, adds the
/// squares to `total`, prints, then exits with status **0**:
///
/// ```text
/// hello32 from ttvm
/// hello32: total 140
/// ```
pub const HELLO32: &str = "hello32";

/// Path of a guest's ELF image in the build's `OUT_DIR`.
pub fn elf_path(name: &str) -> Option<PathBuf> {
    NAMES
        .contains(&name)
        .then(|| PathBuf::from(env!("OUT_DIR")).join(format!("{name}.elf")))
}

/// The guest's ELF image, embedded at compile time.
pub fn elf_bytes(name: &str) -> Option<&'static [u8]> {
    macro_rules! guests {
        ($($n:literal),*) => {
            match name {
                $($n => Some(include_bytes!(concat!(env!("OUT_DIR"), "/", $n, ".elf")).as_slice()),)*
                _ => None,
            }
        };
    }
    guests!(
        "hello", "timer", "echo", "entropy", "crash", "race", "rtc", "fences", "faults", "hello32"
    )
}

/// Directory holding the guests' C/asm sources (`c/`, `runtime/`), as named
/// in their DWARF line tables, so gdb tests can find and check source lines.
pub fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn is_elf64(elf: &[u8]) -> bool {
        elf[4] == 2
    }

    /// (p_type, p_offset, p_paddr, p_filesz, p_memsz, p_align) of each
    /// program header, for ELF64 and ELF32.
    fn phdrs(elf: &[u8]) -> Vec<(u32, usize, u64, usize, u64, u64)> {
        let wide = is_elf64(elf);
        let word = |off: usize| {
            if wide {
                u64_at(elf, off)
            } else {
                u64::from(u32_at(elf, off))
            }
        };
        let (phoff, phentsize, phnum) = if wide {
            (word(0x20), u16_at(elf, 0x36), u16_at(elf, 0x38))
        } else {
            (word(0x1c), u16_at(elf, 0x2a), u16_at(elf, 0x2c))
        };
        (0..usize::from(phnum))
            .map(|i| {
                let p = phoff as usize + i * usize::from(phentsize);
                if wide {
                    (
                        u32_at(elf, p),
                        word(p + 8) as usize,
                        word(p + 24),
                        word(p + 32) as usize,
                        word(p + 40),
                        word(p + 48),
                    )
                } else {
                    (
                        u32_at(elf, p),
                        word(p + 4) as usize,
                        word(p + 12),
                        word(p + 16) as usize,
                        word(p + 20),
                        word(p + 28),
                    )
                }
            })
            .collect()
    }

    /// The PVH entry point from the Xen PHYS32_ENTRY note, if any.
    fn pvh_entry(elf: &[u8]) -> Option<u32> {
        for (ty, off, _, filesz, _, align) in phdrs(elf) {
            if ty != PT_NOTE {
                continue;
            }
            let align = align.max(4) as usize;
            let up = |x: usize| x.div_ceil(align) * align;
            let mut p = off;
            while p + 12 <= off + filesz {
                let (namesz, descsz, ntype) = (
                    u32_at(elf, p) as usize,
                    u32_at(elf, p + 4) as usize,
                    u32_at(elf, p + 8),
                );
                let name = &elf[p + 12..p + 12 + namesz];
                let desc = p + 12 + up(namesz);
                if name == b"Xen\0" && ntype == XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4 {
                    return Some(u32_at(elf, desc));
                }
                p = desc + up(descsz);
            }
        }
        None
    }

    #[test]
    fn every_guest_is_built() {
        for name in NAMES {
            let path = elf_path(name).unwrap();
            assert!(path.is_file(), "{} missing", path.display());
            assert_eq!(std::fs::read(&path).unwrap(), elf_bytes(name).unwrap());
        }
        assert!(elf_path("nonexistent").is_none());
        assert!(elf_bytes("nonexistent").is_none());
    }

    #[test]
    fn every_guest_is_an_x86_elf_with_pvh_note() {
        for name in NAMES {
            let elf = elf_bytes(name).unwrap();
            assert_eq!(&elf[..4], b"\x7fELF", "{name}: not ELF");
            // ELF32 i386 for the `*32` guests, ELF64 x86-64 for the others.
            let (class, machine) = if name.ends_with("32") {
                (1, 3)
            } else {
                (2, 62)
            };
            assert_eq!(elf[4], class, "{name}: wrong ELF class");
            assert_eq!(elf[5], 1, "{name}: not little-endian");
            assert_eq!(u16_at(elf, 0x10), 2, "{name}: not ET_EXEC");
            assert_eq!(u16_at(elf, 0x12), machine, "{name}: wrong machine");
            let entry = pvh_entry(elf).unwrap_or_else(|| panic!("{name}: no PVH note"));
            // The entry lies in a loaded segment at or above 1 MiB.
            let loads: Vec<_> = phdrs(elf).into_iter().filter(|p| p.0 == PT_LOAD).collect();
            assert!(!loads.is_empty(), "{name}: no PT_LOAD");
            assert!(
                loads.iter().all(|p| p.2 >= 0x10_0000),
                "{name}: loads below 1 MiB"
            );
            assert!(
                loads.iter().any(|&(_, _, pa, fsz, _, _)| {
                    (pa..pa + fsz as u64).contains(&u64::from(entry))
                }),
                "{name}: PVH entry {entry:#x} not in a loaded segment"
            );
            let e_entry = if is_elf64(elf) {
                u64_at(elf, 0x18)
            } else {
                u64::from(u32_at(elf, 0x18))
            };
            assert_eq!(u64::from(entry), e_entry, "{name}: e_entry != PVH entry");
        }
    }

    #[test]
    fn names_match_elf_bytes() {
        // elf_bytes() lists the names again (include_bytes! needs literals).
        for name in NAMES {
            assert!(elf_bytes(name).is_some(), "{name} missing from elf_bytes()");
        }
    }

    #[test]
    fn sources_are_found() {
        for name in NAMES {
            let dir = if name.ends_with("32") { "c32" } else { "c" };
            assert!(source_dir().join(dir).join(format!("{name}.c")).is_file());
        }
        assert!(source_dir().join("runtime/rt.c").is_file());
        assert!(source_dir().join("runtime32/entry32.S").is_file());
    }
}
