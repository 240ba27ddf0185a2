//! The register set ttvm serves to gdb, in the layout gdb expects for the guest's ELF
//! class: x86-64 (`i386:x86-64`) for ELF64 guests, i386 for ELF32 guests (gdb rejects a
//! 64-bit description for a 32-bit program, as with QEMU's x86-64 stub). Both carry the
//! general registers, segments, x87 and SSE state (gdb's `i386.core` and `i386.sse`
//! features), `fs_base`/`gs_base` (`i386.segments`), and the control registers and EFER in
//! a feature of our own, so `info registers` shows the machine's mode too. The `g` packet
//! layout is the order of the target description.

use gdbstub::arch::{Arch, Registers};

/// Register values as gdb sees them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TtvmRegs {
    /// The x86-64 layout (else i386: 32-bit registers, eight of them, in i386 order).
    pub wide: bool,
    /// rax rbx rcx rdx rsi rdi rbp rsp r8..r15 (gdb's x86-64 order).
    pub gprs: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    /// cs ss ds es fs gs.
    pub segments: [u32; 6],
    /// st0..st7, 10 bytes each.
    pub st: [[u8; 10]; 8],
    /// fctrl fstat ftag fiseg fioff foseg fooff fop.
    pub x87: [u32; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    /// cr0 cr2 cr3 cr4 efer.
    pub system: [u64; 5],
}

/// gdb's i386 register order (eax ecx edx ebx esp ebp esi edi) as indices into `gprs`.
const I386_ORDER: [usize; 8] = [0, 2, 3, 1, 7, 6, 4, 5];
const X86_64_GPRS: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const I386_GPRS: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];

impl TtvmRegs {
    /// Bytes of a pointer-sized register in this layout.
    fn width(&self) -> usize {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn gpr_indices(&self) -> Vec<usize> {
        if self.wide {
            (0..16).collect()
        } else {
            I386_ORDER.to_vec()
        }
    }

    fn xmm_count(&self) -> usize {
        if self.wide {
            16
        } else {
            8
        }
    }
}

/// Reads little-endian fields off a `G` packet's bytes.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ()> {
        let s = self.bytes.get(self.at..self.at + n).ok_or(())?;
        self.at += n;
        Ok(s)
    }

    /// An unsigned field of `n` <= 16 bytes.
    fn uint(&mut self, n: usize) -> Result<u128, ()> {
        let mut buf = [0u8; 16];
        buf[..n].copy_from_slice(self.take(n)?);
        Ok(u128::from_le_bytes(buf))
    }
}

impl Registers for TtvmRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let w = self.width();
        let mut put = |value: u128, n: usize| {
            value.to_le_bytes()[..n]
                .iter()
                .for_each(|&b| write_byte(Some(b)))
        };
        for i in self.gpr_indices() {
            put(u128::from(self.gprs[i]), w);
        }
        put(u128::from(self.rip), w);
        put(u128::from(self.eflags), 4);
        for s in self.segments {
            put(u128::from(s), 4);
        }
        for st in &self.st {
            let mut buf = [0u8; 16];
            buf[..10].copy_from_slice(st);
            put(u128::from_le_bytes(buf), 10);
        }
        for r in self.x87 {
            put(u128::from(r), 4);
        }
        for x in &self.xmm[..self.xmm_count()] {
            put(*x, 16);
        }
        put(u128::from(self.mxcsr), 4);
        put(u128::from(self.fs_base), w);
        put(u128::from(self.gs_base), w);
        for r in self.system {
            put(u128::from(r), 8);
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // Register writes are refused by the target (they would change the recorded
        // execution); parsing them is still exact so the refusal is about the write.
        let w = self.width();
        let mut f = Fields { bytes, at: 0 };
        for i in self.gpr_indices() {
            self.gprs[i] = f.uint(w)? as u64;
        }
        self.rip = f.uint(w)? as u64;
        self.eflags = f.uint(4)? as u32;
        for s in self.segments.iter_mut() {
            *s = f.uint(4)? as u32;
        }
        for st in self.st.iter_mut() {
            st.copy_from_slice(f.take(10)?);
        }
        for r in self.x87.iter_mut() {
            *r = f.uint(4)? as u32;
        }
        let count = self.xmm_count();
        for x in self.xmm[..count].iter_mut() {
            *x = f.uint(16)?;
        }
        self.mxcsr = f.uint(4)? as u32;
        self.fs_base = f.uint(w)? as u64;
        self.gs_base = f.uint(w)? as u64;
        for r in self.system.iter_mut() {
            *r = f.uint(8)? as u64;
        }
        Ok(())
    }
}

/// ttvm's x86 machine for gdbstub. The description gdb gets is chosen per guest (see
/// [`target_xml`]); this static one is the x86-64 default.
pub enum TtvmX86 {}

impl Arch for TtvmX86 {
    type Usize = u64;
    type Registers = TtvmRegs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        None
    }
}

const EFLAGS_TYPE: &str = r#"  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
"#;

const VEC128_TYPE: &str = r#"  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
"#;

/// The target description for the x86-64 (`wide`) or the i386 layout.
pub fn target_xml(wide: bool) -> String {
    use std::fmt::Write;
    let (arch, bits, int, gprs, pc): (_, _, _, &[&str], _) = if wide {
        ("i386:x86-64", 64, "int64", &X86_64_GPRS, "rip")
    } else {
        ("i386", 32, "int32", &I386_GPRS, "eip")
    };
    let mut x = String::new();
    let _ = write!(
        x,
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n\
         <target version=\"1.0\">\n<architecture>{arch}</architecture>\n\
         <feature name=\"org.gnu.gdb.i386.core\">\n{EFLAGS_TYPE}"
    );
    for name in gprs {
        let ty = if name.ends_with("bp") || name.ends_with("sp") {
            "data_ptr"
        } else {
            int
        };
        let _ = writeln!(
            x,
            "  <reg name=\"{name}\" bitsize=\"{bits}\" type=\"{ty}\"/>"
        );
    }
    let _ = writeln!(
        x,
        "  <reg name=\"{pc}\" bitsize=\"{bits}\" type=\"code_ptr\"/>"
    );
    x.push_str("  <reg name=\"eflags\" bitsize=\"32\" type=\"i386_eflags\"/>\n");
    for seg in ["cs", "ss", "ds", "es", "fs", "gs"] {
        let _ = writeln!(x, "  <reg name=\"{seg}\" bitsize=\"32\" type=\"int32\"/>");
    }
    for i in 0..8 {
        let _ = writeln!(
            x,
            "  <reg name=\"st{i}\" bitsize=\"80\" type=\"i387_ext\"/>"
        );
    }
    for name in [
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
    ] {
        let _ = writeln!(
            x,
            "  <reg name=\"{name}\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
        );
    }
    let _ = write!(
        x,
        "</feature>\n<feature name=\"org.gnu.gdb.i386.sse\">\n{VEC128_TYPE}"
    );
    for i in 0..if wide { 16 } else { 8 } {
        let _ = writeln!(
            x,
            "  <reg name=\"xmm{i}\" bitsize=\"128\" type=\"vec128\"/>"
        );
    }
    x.push_str(
        "  <reg name=\"mxcsr\" bitsize=\"32\" type=\"int\" group=\"vector\"/>\n</feature>\n",
    );
    // gdb 13 asserts on `i386.segments` in an i386 description (tdesc_use_registers), so
    // the 32-bit layout carries the bases at the head of ttvm's own feature instead.
    if wide {
        x.push_str("<feature name=\"org.gnu.gdb.i386.segments\">\n");
    } else {
        x.push_str("<feature name=\"org.ttvm.x86.system\">\n");
    }
    for name in ["fs_base", "gs_base"] {
        let _ = writeln!(
            x,
            "  <reg name=\"{name}\" bitsize=\"{bits}\" type=\"{int}\"/>"
        );
    }
    if wide {
        x.push_str("</feature>\n<feature name=\"org.ttvm.x86.system\">\n");
    }
    for name in ["cr0", "cr2", "cr3", "cr4", "efer"] {
        let _ = writeln!(x, "  <reg name=\"{name}\" bitsize=\"64\" type=\"int64\"/>");
    }
    x.push_str("</feature>\n</target>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(wide: bool) -> TtvmRegs {
        let mut r = TtvmRegs {
            wide,
            rip: 0x1234,
            eflags: 0x202,
            fs_base: 7,
            ..Default::default()
        };
        for (i, g) in r
            .gprs
            .iter_mut()
            .enumerate()
            .take(if wide { 16 } else { 8 })
        {
            *g = 0x1000 + i as u64;
        }
        r.system[4] = 0x500;
        r.xmm[3] = u128::MAX - 5;
        r
    }

    #[test]
    fn serialize_and_deserialize_agree_in_both_layouts() {
        // x86-64: 16*8 + 8 + 4 + 6*4 + 8*10 + 8*4 + 16*16 + 4 + 2*8 + 5*8
        // i386:    8*4 + 4 + 4 + 6*4 + 8*10 + 8*4 +  8*16 + 4 + 2*4 + 5*8
        for (wide, len) in [(true, 592), (false, 356)] {
            let r = sample(wide);
            let mut bytes = Vec::new();
            r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
            assert_eq!(bytes.len(), len, "wide {wide}");
            let mut back = TtvmRegs {
                wide,
                ..Default::default()
            };
            back.gdb_deserialize(&bytes).unwrap();
            assert_eq!(back, r);
            assert!(back.gdb_deserialize(&bytes[..100]).is_err());
        }
    }

    #[test]
    fn i386_layout_puts_registers_in_gdbs_i386_order() {
        let r = sample(false);
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        // eax ecx edx ebx esp ebp esi edi = gprs[0 2 3 1 7 6 4 5], then eip.
        let want = [
            0x1000, 0x1002, 0x1003, 0x1001, 0x1007, 0x1006, 0x1004, 0x1005, 0x1234,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(word(i), *w, "field {i}");
        }
    }

    #[test]
    fn descriptions_list_the_registers_of_their_layout() {
        let count = |x: &str| x.matches("<reg ").count();
        let wide = target_xml(true);
        let narrow = target_xml(false);
        assert!(wide.contains("<architecture>i386:x86-64</architecture>"));
        assert!(narrow.contains("<architecture>i386</architecture>"));
        assert!(narrow.contains(r#"<reg name="eip" bitsize="32" type="code_ptr"/>"#));
        assert!(!narrow.contains("xmm8") && wide.contains("xmm15"));
        // gprs + pc + eflags + 6 segments + 8 st + 8 x87 + xmm + mxcsr + 2 bases + 5 system
        assert_eq!(count(&wide), 16 + 1 + 1 + 6 + 8 + 8 + 16 + 1 + 2 + 5);
        assert_eq!(count(&narrow), 8 + 1 + 1 + 6 + 8 + 8 + 8 + 1 + 2 + 5);
    }
}
