//! The register set ttvm serves to gdb: the x86-64 general registers, segments, x87 and
//! SSE state (gdb's `i386.core` and `i386.sse` features), `fs_base`/`gs_base` (gdb's
//! `i386.segments` feature) and the control registers and EFER in a feature of our own, so
//! `info registers` shows the machine's mode too. The `g` packet layout is the order of
//! the target description below.

use gdbstub::arch::{Arch, Registers};

/// Register values as gdb sees them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TtvmRegs {
    /// rax rbx rcx rdx rsi rdi rbp rsp r8..r15 (gdb's order).
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

impl Registers for TtvmRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut put = |bytes: &[u8]| bytes.iter().for_each(|&b| write_byte(Some(b)));
        for r in self.gprs {
            put(&r.to_le_bytes());
        }
        put(&self.rip.to_le_bytes());
        put(&self.eflags.to_le_bytes());
        for s in self.segments {
            put(&s.to_le_bytes());
        }
        for st in &self.st {
            put(st);
        }
        for r in self.x87 {
            put(&r.to_le_bytes());
        }
        for x in self.xmm {
            put(&x.to_le_bytes());
        }
        put(&self.mxcsr.to_le_bytes());
        put(&self.fs_base.to_le_bytes());
        put(&self.gs_base.to_le_bytes());
        for r in self.system {
            put(&r.to_le_bytes());
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // Register writes are refused by the target (they would change the recorded
        // execution); parsing them is still exact so the refusal is about the write.
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], ()> {
            let s = bytes.get(at..at + n).ok_or(())?;
            at += n;
            Ok(s)
        };
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or_default());
        for r in self.gprs.iter_mut() {
            *r = u64_of(take(8)?);
        }
        self.rip = u64_of(take(8)?);
        self.eflags = u32_of(take(4)?);
        for s in self.segments.iter_mut() {
            *s = u32_of(take(4)?);
        }
        for st in self.st.iter_mut() {
            st.copy_from_slice(take(10)?);
        }
        for r in self.x87.iter_mut() {
            *r = u32_of(take(4)?);
        }
        for x in self.xmm.iter_mut() {
            *x = u128::from_le_bytes(take(16)?.try_into().unwrap_or_default());
        }
        self.mxcsr = u32_of(take(4)?);
        self.fs_base = u64_of(take(8)?);
        self.gs_base = u64_of(take(8)?);
        for r in self.system.iter_mut() {
            *r = u64_of(take(8)?);
        }
        Ok(())
    }
}

/// ttvm's x86-64 machine for gdbstub.
pub enum TtvmX86_64 {}

impl Arch for TtvmX86_64 {
    type Usize = u64;
    type Registers = TtvmRegs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
  <flags id="i386_eflags" size="4">
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
  <reg name="rax" bitsize="64" type="int64"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="rcx" bitsize="64" type="int64"/>
  <reg name="rdx" bitsize="64" type="int64"/>
  <reg name="rsi" bitsize="64" type="int64"/>
  <reg name="rdi" bitsize="64" type="int64"/>
  <reg name="rbp" bitsize="64" type="data_ptr"/>
  <reg name="rsp" bitsize="64" type="data_ptr"/>
  <reg name="r8" bitsize="64" type="int64"/>
  <reg name="r9" bitsize="64" type="int64"/>
  <reg name="r10" bitsize="64" type="int64"/>
  <reg name="r11" bitsize="64" type="int64"/>
  <reg name="r12" bitsize="64" type="int64"/>
  <reg name="r13" bitsize="64" type="int64"/>
  <reg name="r14" bitsize="64" type="int64"/>
  <reg name="r15" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="i386_eflags"/>
  <reg name="cs" bitsize="32" type="int32"/>
  <reg name="ss" bitsize="32" type="int32"/>
  <reg name="ds" bitsize="32" type="int32"/>
  <reg name="es" bitsize="32" type="int32"/>
  <reg name="fs" bitsize="32" type="int32"/>
  <reg name="gs" bitsize="32" type="int32"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
  <reg name="st1" bitsize="80" type="i387_ext"/>
  <reg name="st2" bitsize="80" type="i387_ext"/>
  <reg name="st3" bitsize="80" type="i387_ext"/>
  <reg name="st4" bitsize="80" type="i387_ext"/>
  <reg name="st5" bitsize="80" type="i387_ext"/>
  <reg name="st6" bitsize="80" type="i387_ext"/>
  <reg name="st7" bitsize="80" type="i387_ext"/>
  <reg name="fctrl" bitsize="32" type="int" group="float"/>
  <reg name="fstat" bitsize="32" type="int" group="float"/>
  <reg name="ftag" bitsize="32" type="int" group="float"/>
  <reg name="fiseg" bitsize="32" type="int" group="float"/>
  <reg name="fioff" bitsize="32" type="int" group="float"/>
  <reg name="foseg" bitsize="32" type="int" group="float"/>
  <reg name="fooff" bitsize="32" type="int" group="float"/>
  <reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
  <vector id="v4f" type="ieee_single" count="4"/>
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
  <reg name="xmm0" bitsize="128" type="vec128"/>
  <reg name="xmm1" bitsize="128" type="vec128"/>
  <reg name="xmm2" bitsize="128" type="vec128"/>
  <reg name="xmm3" bitsize="128" type="vec128"/>
  <reg name="xmm4" bitsize="128" type="vec128"/>
  <reg name="xmm5" bitsize="128" type="vec128"/>
  <reg name="xmm6" bitsize="128" type="vec128"/>
  <reg name="xmm7" bitsize="128" type="vec128"/>
  <reg name="xmm8" bitsize="128" type="vec128"/>
  <reg name="xmm9" bitsize="128" type="vec128"/>
  <reg name="xmm10" bitsize="128" type="vec128"/>
  <reg name="xmm11" bitsize="128" type="vec128"/>
  <reg name="xmm12" bitsize="128" type="vec128"/>
  <reg name="xmm13" bitsize="128" type="vec128"/>
  <reg name="xmm14" bitsize="128" type="vec128"/>
  <reg name="xmm15" bitsize="128" type="vec128"/>
  <reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
  <reg name="fs_base" bitsize="64" type="int64"/>
  <reg name="gs_base" bitsize="64" type="int64"/>
</feature>
<feature name="org.ttvm.x86.system">
  <reg name="cr0" bitsize="64" type="int64"/>
  <reg name="cr2" bitsize="64" type="int64"/>
  <reg name="cr3" bitsize="64" type="int64"/>
  <reg name="cr4" bitsize="64" type="int64"/>
  <reg name="efer" bitsize="64" type="int64"/>
</feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialize_and_deserialize_agree() {
        let mut r = TtvmRegs {
            rip: 0x1234,
            eflags: 0x202,
            fs_base: 7,
            ..Default::default()
        };
        r.gprs[6] = 0xfeed;
        r.system[4] = 0x500;
        r.xmm[3] = u128::MAX - 5;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        // 16*8 + 8 + 4 + 6*4 + 8*10 + 8*4 + 16*16 + 4 + 2*8 + 5*8
        assert_eq!(bytes.len(), 592);
        let mut back = TtvmRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.gdb_deserialize(&bytes[..100]).is_err());
    }
}
