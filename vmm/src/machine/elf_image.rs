//! Reading a guest image: an ELF (32- or 64-bit, x86) with a PVH entry note.
//!
//! This is the checking half of loading: every header, segment and note is validated
//! against the file and the guest's RAM before a byte is copied, so a bad image is a
//! precise error, never a partial load. ELF64 images are then copied by linux-loader; ELF32
//! images (which linux-loader does not read) by `boot::load_segments`.

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note giving the PVH 32-bit entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Guest-physical start of the area an image may occupy (below: ttvm's boot data).
pub const IMAGE_MIN_ADDR: u64 = 0x10_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    Elf32,
    Elf64,
}

/// A loadable segment: `file_size` bytes from `offset` go to `paddr`, then zeros up to
/// `mem_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub offset: u64,
    pub file_size: u64,
    pub mem_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    pub class: ElfClass,
    pub segments: Vec<Segment>,
    /// The PVH entry point (guest-physical, 32-bit protected mode).
    pub pvh_entry: u32,
    /// Highest guest-physical address the image occupies (exclusive).
    pub end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the guest image is not an ELF file (it does not start with \\x7fELF)")]
    NotElf,
    #[error(
        "the guest image is a compressed Linux kernel (bzImage, e.g. /boot/vmlinuz-*); ttvm \
         boots the uncompressed vmlinux ELF, which a kernel built with CONFIG_PVH=y has: take \
         it from the build tree, or extract it with the kernel's scripts/extract-vmlinux"
    )]
    LinuxBzImage,
    #[error("the guest image is a big-endian or unknown-class ELF; ttvm boots little-endian x86 ELF32/ELF64 images")]
    UnsupportedElf,
    #[error("the guest image is an ELF for machine {0}, not x86 or x86-64")]
    WrongMachine(u16),
    #[error("the guest image is truncated or malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "the guest image has no PVH entry point (no XEN_ELFNOTE_PHYS32_ENTRY note): ttvm \
         boots PVH ELFs, e.g. a Linux vmlinux built with CONFIG_PVH=y"
    )]
    NoPvhNote,
    #[error("the guest image has no loadable segment")]
    NoSegments,
    #[error(
        "the guest image does not fit in guest memory: it needs memory up to {end:#x} \
         ({end_mib} MiB) but --mem gives {mem_mib} MiB"
    )]
    TooLarge {
        end: u64,
        end_mib: u64,
        mem_mib: u64,
    },
    #[error(
        "the guest image has a segment at {paddr:#x}, below 1 MiB, where ttvm keeps the \
         boot information; PVH images load at 1 MiB or above"
    )]
    BelowImageArea { paddr: u64 },
    #[error(
        "the PVH entry point {entry:#x} is outside the code the image loads (the file \
         contents of its segments)"
    )]
    EntryOutside { entry: u32 },
    #[error("the guest image's PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) is corrupted: {0}")]
    BadPvhNote(&'static str),
}

/// Little-endian field reader over the image bytes; every access is bounds-checked.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], ImageError> {
        let start = usize::try_from(offset).map_err(|_| ImageError::Malformed("offset"))?;
        let len = usize::try_from(len).map_err(|_| ImageError::Malformed("length"))?;
        let end = start
            .checked_add(len)
            .ok_or(ImageError::Malformed("offset overflow"))?;
        self.0.get(start..end).ok_or(ImageError::Malformed(
            "a header points past the end of the file",
        ))
    }
    fn u16(&self, offset: u64) -> Result<u16, ImageError> {
        let b = self.slice(offset, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, offset: u64) -> Result<u32, ImageError> {
        let b = self.slice(offset, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, offset: u64) -> Result<u64, ImageError> {
        let b = self.slice(offset, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A 32- or 64-bit word depending on the class.
    fn word(&self, class: ElfClass, offset: u64) -> Result<u64, ImageError> {
        match class {
            ElfClass::Elf32 => self.u32(offset).map(u64::from),
            ElfClass::Elf64 => self.u64(offset),
        }
    }
}

struct ProgramHeader {
    p_type: u32,
    offset: u64,
    paddr: u64,
    file_size: u64,
    mem_size: u64,
}

fn program_headers(b: &Bytes, class: ElfClass) -> Result<Vec<ProgramHeader>, ImageError> {
    let (phoff, phentsize_at, phnum_at, min_entsize) = match class {
        ElfClass::Elf32 => (b.word(class, 0x1c)?, 0x2a, 0x2c, 32),
        ElfClass::Elf64 => (b.word(class, 0x20)?, 0x36, 0x38, 56),
    };
    let entsize = u64::from(b.u16(phentsize_at)?);
    let count = b.u16(phnum_at)?;
    if entsize < min_entsize {
        return Err(ImageError::Malformed(
            "program header entries are too small",
        ));
    }
    (0..u64::from(count))
        .map(|i| {
            let at = phoff
                .checked_add(i * entsize)
                .ok_or(ImageError::Malformed("program header offset overflow"))?;
            b.slice(at, entsize)?;
            Ok(match class {
                ElfClass::Elf32 => ProgramHeader {
                    p_type: b.u32(at)?,
                    offset: b.word(class, at + 4)?,
                    paddr: b.word(class, at + 12)?,
                    file_size: b.word(class, at + 16)?,
                    mem_size: b.word(class, at + 20)?,
                },
                ElfClass::Elf64 => ProgramHeader {
                    p_type: b.u32(at)?,
                    offset: b.u64(at + 8)?,
                    paddr: b.u64(at + 24)?,
                    file_size: b.u64(at + 32)?,
                    mem_size: b.u64(at + 40)?,
                },
            })
        })
        .collect()
}

/// The entry address of a `Xen`-owned XEN_ELFNOTE_PHYS32_ENTRY note: its owner is
/// exactly "Xen" and its descriptor a 32-bit address (some images store it in a 64-bit
/// word, whose high half must then be zero). Anything else is a damaged note, never
/// guessed at.
fn pvh_entry_of(name: &[u8], desc: &[u8]) -> Result<u32, ImageError> {
    if name != b"Xen\0" {
        return Err(ImageError::BadPvhNote("its owner name is not \"Xen\""));
    }
    let word = |at: usize| u32::from_le_bytes([desc[at], desc[at + 1], desc[at + 2], desc[at + 3]]);
    match desc.len() {
        4 => Ok(word(0)),
        8 if word(4) == 0 => Ok(word(0)),
        8 => Err(ImageError::BadPvhNote(
            "its entry address does not fit in 32 bits",
        )),
        _ => Err(ImageError::BadPvhNote(
            "its descriptor is neither 4 nor 8 bytes",
        )),
    }
}

/// The PVH entry addresses of the notes in a PT_NOTE segment (normally one).
fn pvh_entries_of(b: &Bytes, ph: &ProgramHeader) -> Result<Vec<u32>, ImageError> {
    let notes = b.slice(ph.offset, ph.file_size)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let word =
            |o: usize| u32::from_le_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]);
        let (namesz, descsz, kind) = (word(at) as usize, word(at + 4) as usize, word(at + 8));
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(namesz.next_multiple_of(4))
            .ok_or(ImageError::Malformed("note size overflow"))?;
        let next = desc_at
            .checked_add(descsz.next_multiple_of(4))
            .ok_or(ImageError::Malformed("note size overflow"))?;
        if next > notes.len() {
            return Err(ImageError::Malformed("an ELF note runs past its segment"));
        }
        let name = &notes[name_at..name_at + namesz];
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            entries.push(pvh_entry_of(name, &notes[desc_at..desc_at + descsz])?);
        }
        at = next;
    }
    Ok(entries)
}

/// Parses and validates `image` for a guest with `mem_bytes` of RAM.
pub fn parse(image: &[u8], mem_bytes: u64) -> Result<ElfImage, ImageError> {
    let b = Bytes(image);
    if image.len() < 4 || &image[..4] != b"\x7fELF" {
        // The Linux boot protocol's setup header: "HdrS" at 0x202.
        if image.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
            return Err(ImageError::LinuxBzImage);
        }
        return Err(ImageError::NotElf);
    }
    let ident = b
        .slice(0, 16)
        .map_err(|_| ImageError::Malformed("ELF header"))?;
    let class = match (ident[4], ident[5]) {
        (1, 1) => ElfClass::Elf32,
        (2, 1) => ElfClass::Elf64,
        _ => return Err(ImageError::UnsupportedElf),
    };
    let machine = b.u16(0x12)?;
    match (class, machine) {
        (ElfClass::Elf32, EM_386) | (ElfClass::Elf64, EM_X86_64) => {}
        (_, m) => return Err(ImageError::WrongMachine(m)),
    }
    let headers = program_headers(&b, class)?;
    let mut pvh_entries = Vec::new();
    let mut segments = Vec::new();
    for ph in &headers {
        match ph.p_type {
            PT_NOTE => pvh_entries.extend(pvh_entries_of(&b, ph)?),
            PT_LOAD if ph.file_size > ph.mem_size => {
                // Also with p_memsz 0: the loader would drop the file's bytes silently.
                return Err(ImageError::Malformed(
                    "a segment's file size exceeds its memory size",
                ));
            }
            PT_LOAD if ph.mem_size > 0 => {
                b.slice(ph.offset, ph.file_size)?;
                segments.push(Segment {
                    paddr: ph.paddr,
                    offset: ph.offset,
                    file_size: ph.file_size,
                    mem_size: ph.mem_size,
                });
            }
            _ => {}
        }
    }
    let pvh_entry = *pvh_entries.first().ok_or(ImageError::NoPvhNote)?;
    if pvh_entries.iter().any(|&e| e != pvh_entry) {
        return Err(ImageError::BadPvhNote(
            "the image has several entry notes that disagree",
        ));
    }
    if segments.is_empty() {
        return Err(ImageError::NoSegments);
    }
    let mut end = 0u64;
    for s in &segments {
        if s.paddr < IMAGE_MIN_ADDR {
            return Err(ImageError::BelowImageArea { paddr: s.paddr });
        }
        let seg_end = s
            .paddr
            .checked_add(s.mem_size)
            .ok_or(ImageError::Malformed("segment address overflow"))?;
        end = end.max(seg_end);
    }
    if end > mem_bytes {
        return Err(ImageError::TooLarge {
            end,
            end_mib: end.div_ceil(1 << 20),
            mem_mib: mem_bytes >> 20,
        });
    }
    let entry = u64::from(pvh_entry);
    // The entry must be code from the file, not the zeros that fill a segment's tail.
    if !segments
        .iter()
        .any(|s| entry >= s.paddr && entry < s.paddr + s.file_size)
    {
        return Err(ImageError::EntryOutside { entry: pvh_entry });
    }
    Ok(ElfImage {
        class,
        segments,
        pvh_entry,
        end,
    })
}

/// Hand-made images for tests of bad input (here and in the end-to-end tests).
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A minimal ELF (32 or 64-bit) with one PT_LOAD of `hlt`s at 1 MiB, `load_size` bytes
    /// in memory, and optionally a PVH note pointing at it.
    pub fn tiny_elf(class: ElfClass, with_note: bool, load_size: u64) -> Vec<u8> {
        let mut note = Vec::new();
        if with_note {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&0x10_0000u32.to_le_bytes());
        }
        let code = [0xf4u8; 16]; // hlt
        let (ehsize, phsize) = match class {
            ElfClass::Elf32 => (52u64, 32u64),
            ElfClass::Elf64 => (64, 56),
        };
        let phoff = ehsize;
        let note_off = phoff + 2 * phsize;
        let code_off = note_off + note.len() as u64;
        let mut f = vec![0u8; note_off as usize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if class == ElfClass::Elf32 { 1 } else { 2 };
        f[5] = 1;
        f[6] = 1;
        f[0x10] = 2; // ET_EXEC
        let machine = if class == ElfClass::Elf32 {
            EM_386
        } else {
            EM_X86_64
        };
        f[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        let put = |f: &mut Vec<u8>, at: u64, v: u64, wide: bool| {
            let at = at as usize;
            if wide {
                f[at..at + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                f[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        };
        let wide = class == ElfClass::Elf64;
        match class {
            ElfClass::Elf32 => {
                put(&mut f, 0x18, 0x10_0000, false);
                put(&mut f, 0x1c, phoff, false);
                f[0x2a..0x2c].copy_from_slice(&(phsize as u16).to_le_bytes());
                f[0x2c..0x2e].copy_from_slice(&2u16.to_le_bytes());
            }
            ElfClass::Elf64 => {
                put(&mut f, 0x18, 0x10_0000, true);
                put(&mut f, 0x20, phoff, true);
                f[0x36..0x38].copy_from_slice(&(phsize as u16).to_le_bytes());
                f[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
            }
        }
        // (type, offset, paddr, filesz, memsz) for the note and the load segment.
        let phdrs = [
            (PT_NOTE, note_off, 0, note.len() as u64, note.len() as u64),
            (PT_LOAD, code_off, 0x10_0000, code.len() as u64, load_size),
        ];
        for (i, (t, off, paddr, filesz, memsz)) in phdrs.into_iter().enumerate() {
            let at = phoff + i as u64 * phsize;
            put(&mut f, at, u64::from(t), false);
            if wide {
                put(&mut f, at + 8, off, true);
                put(&mut f, at + 16, paddr, true);
                put(&mut f, at + 24, paddr, true);
                put(&mut f, at + 32, filesz, true);
                put(&mut f, at + 40, memsz, true);
            } else {
                put(&mut f, at + 4, off, false);
                put(&mut f, at + 8, paddr, false);
                put(&mut f, at + 12, paddr, false);
                put(&mut f, at + 16, filesz, false);
                put(&mut f, at + 20, memsz, false);
            }
        }
        f.extend_from_slice(&note);
        f.extend_from_slice(&code);
        f
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testing::tiny_elf;
    use super::*;

    #[test]
    fn parses_both_classes() {
        for class in [ElfClass::Elf32, ElfClass::Elf64] {
            let img = parse(&tiny_elf(class, true, 16), 64 << 20).unwrap();
            assert_eq!(img.class, class);
            assert_eq!(img.pvh_entry, 0x10_0000);
            assert_eq!(img.segments.len(), 1);
        }
    }

    #[test]
    fn bad_images_are_precise_errors() {
        assert_eq!(parse(b"MZ\x90\x00", 64 << 20), Err(ImageError::NotElf));
        let mut bz = vec![0u8; 0x400];
        bz[..2].copy_from_slice(b"MZ");
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(parse(&bz, 64 << 20), Err(ImageError::LinuxBzImage));
        assert_eq!(parse(b"", 64 << 20), Err(ImageError::NotElf));
        assert_eq!(
            parse(&tiny_elf(ElfClass::Elf64, false, 16), 64 << 20),
            Err(ImageError::NoPvhNote)
        );
        assert!(matches!(
            parse(&tiny_elf(ElfClass::Elf64, true, 100 << 20), 64 << 20),
            Err(ImageError::TooLarge { .. })
        ));
    }

    /// Byte offsets in `tiny_elf(Elf64, true, _)`: the load segment's p_memsz, and the
    /// note's namesz and descriptor.
    const LOAD_MEMSZ: usize = 64 + 56 + 40;
    const NOTE_NAMESZ: usize = 64 + 2 * 56;
    const NOTE_DESC: usize = NOTE_NAMESZ + 16;

    #[test]
    fn file_size_above_memory_size_is_refused_even_with_no_memory() {
        let mut img = tiny_elf(ElfClass::Elf64, true, 16);
        img[LOAD_MEMSZ..LOAD_MEMSZ + 8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            parse(&img, 64 << 20),
            Err(ImageError::Malformed(
                "a segment's file size exceeds its memory size"
            ))
        );
    }

    #[test]
    fn corrupted_pvh_notes_are_refused() {
        let good = tiny_elf(ElfClass::Elf64, true, 64);
        // Owner "Xen" without its NUL (namesz 3).
        let mut img = good.clone();
        img[NOTE_NAMESZ] = 3;
        assert_eq!(
            parse(&img, 64 << 20),
            Err(ImageError::BadPvhNote("its owner name is not \"Xen\""))
        );
        // A 3-byte descriptor (padded to 4, so it still fits its segment).
        let mut img = good.clone();
        img[NOTE_NAMESZ + 4] = 3;
        assert_eq!(
            parse(&img, 64 << 20),
            Err(ImageError::BadPvhNote(
                "its descriptor is neither 4 nor 8 bytes"
            ))
        );
        // An entry in the segment's zero-filled tail (memsz 64, file 16 bytes).
        let mut img = good.clone();
        img[NOTE_DESC..NOTE_DESC + 4].copy_from_slice(&0x10_0020u32.to_le_bytes());
        assert_eq!(
            parse(&img, 64 << 20),
            Err(ImageError::EntryOutside { entry: 0x10_0020 })
        );
        assert!(parse(&good, 64 << 20).is_ok());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_elf(ElfClass::Elf64, true, 16);
        for len in 0..full.len() {
            assert!(parse(&full[..len], 64 << 20).is_err(), "len {len}");
        }
    }
}
