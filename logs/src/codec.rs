//! Compact binary encoding of events inside a chunk.
//!
//! Each event is `tag: u8`, `position delta: varint`, then a kind-specific payload (see
//! `FORMAT.md` for the table). Varints are unsigned LEB128 (7 bits a byte, low first,
//! at most 10 bytes). The position delta is relative to the previous event of the
//! chunk, or to the chunk header's `base_position` for the first one, so a chunk decodes
//! on its own.
//!
//! Why our own encoding rather than postcard/bincode: the tags must be stable numbers
//! independent of the Rust enum's declaration order (append-only growth, an "unknown
//! kind N" error for old readers), positions must be delta-coded against state that
//! lives outside the event, and random 64-bit values (rdrand, digests) are cheaper as
//! fixed 8 bytes than as varints. The whole codec is ~200 lines and has no dependency.
use crate::event::{EndReason, Event, EventKind, EventRecord};
use thiserror::Error;

/// Longest valid varint (a `u64` needs 10 groups of 7 bits).
pub const MAX_VARINT_LEN: usize = 10;

/// A failure to decode the raw (decompressed) bytes of a chunk.
///
/// Offsets are byte offsets inside the chunk's raw data; the reader adds file and chunk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The data ends inside an event.
    #[error("event data ends in the middle of an event (raw byte {offset})")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
    },
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("malformed varint at raw byte {offset}")]
    BadVarint {
        /// Start of the varint.
        offset: usize,
    },
    /// A tag this version does not know.
    #[error("unknown event kind {kind} at raw byte {offset}: trace made by a newer ttvm?")]
    UnknownKind {
        /// The tag found.
        kind: u8,
        /// Where.
        offset: usize,
    },
    /// An end-reason tag this version does not know.
    #[error("unknown end reason {reason} at raw byte {offset}: trace made by a newer ttvm?")]
    UnknownEndReason {
        /// The tag found.
        reason: u8,
        /// Where.
        offset: usize,
    },
    /// A field holds a value outside its range (a bool that is not 0/1, a u16 > 65535...).
    #[error("{field} out of range ({value}) at raw byte {offset}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Where.
        offset: usize,
    },
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8 at raw byte {offset}")]
    BadUtf8 {
        /// Where the text starts.
        offset: usize,
    },
    /// Position plus delta overflows 64 bits.
    #[error("position overflows 64 bits at raw byte {offset}")]
    PositionOverflow {
        /// Where the delta is.
        offset: usize,
    },
}

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Appends the encoding of `record` to `buf`; `prev_position` is the position of the
/// previous event of the chunk (or the chunk's base position). The caller guarantees
/// `record.position >= prev_position`.
/// Most registers a `Registers` event may hold (a bound for readers of damaged data).
pub const MAX_REGISTERS: u64 = 64;

#[inline]
pub fn encode_event(buf: &mut Vec<u8>, prev_position: u64, record: &EventRecord) {
    debug_assert!(record.position >= prev_position);
    let event = &record.event;
    buf.push(event.kind().tag());
    put_varint(buf, record.position.wrapping_sub(prev_position));
    match event {
        Event::Interrupt { vector } => buf.push(*vector),
        Event::SerialInput { bytes } => put_bytes(buf, bytes),
        Event::SerialHangup => {}
        Event::HostTime { nanos } => put_varint(buf, *nanos),
        Event::WallClock { unix_nanos } => put_varint(buf, *unix_nanos),
        Event::Rdtsc { value } => put_varint(buf, *value),
        Event::Rdtscp { value, aux } => {
            put_varint(buf, *value);
            put_varint(buf, u64::from(*aux));
        }
        Event::Rdrand { value, ok } | Event::Rdseed { value, ok } => {
            buf.push(u8::from(*ok));
            buf.extend_from_slice(&value.to_le_bytes());
        }
        Event::DeviceData { device, bytes } => {
            put_varint(buf, u64::from(*device));
            put_bytes(buf, bytes);
        }
        Event::StateDigest { digest } => buf.extend_from_slice(&digest.to_le_bytes()),
        Event::End { reason } => encode_end_reason(buf, reason),
        Event::Registers { regs } => {
            put_varint(buf, regs.len() as u64);
            for r in regs {
                put_varint(buf, *r);
            }
        }
        Event::PmuStop {
            rip,
            rcx,
            asynchronous,
        } => {
            put_varint(buf, *rip);
            put_varint(buf, *rcx);
            buf.push(u8::from(*asynchronous));
        }
    }
}

fn encode_end_reason(buf: &mut Vec<u8>, reason: &EndReason) {
    match reason {
        EndReason::GuestExit { status } => {
            buf.push(1);
            buf.push(*status);
        }
        EndReason::TripleFault { rip } => {
            buf.push(2);
            put_varint(buf, *rip);
        }
        EndReason::HaltedForGood { rip } => {
            buf.push(3);
            put_varint(buf, *rip);
        }
        EndReason::Reset => buf.push(4),
        EndReason::EmulationError { rip, detail } => {
            buf.push(5);
            put_varint(buf, *rip);
            put_bytes(buf, detail.as_bytes());
        }
        EndReason::VmmError { message } => {
            buf.push(6);
            put_bytes(buf, message.as_bytes());
        }
        EndReason::Interrupted => buf.push(7),
    }
}

/// Encoded size of `record` after an event at `prev_position` (for statistics).
pub fn encoded_len(prev_position: u64, record: &EventRecord) -> usize {
    let mut buf = Vec::new();
    encode_event(&mut buf, prev_position, record);
    buf.len()
}

/// A cursor over the raw bytes of one chunk.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Current offset in the raw bytes.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], CodecError> {
        let remaining = self.buf.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= remaining)
            .ok_or(CodecError::Truncated {
                offset: self.buf.len(),
            })?;
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn u64_le(&mut self) -> Result<u64, CodecError> {
        let bytes = self.take(8)?;
        let mut arr = [0u8; 8];
        arr.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(arr))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(CodecError::OutOfRange {
                field,
                value: u64::from(v),
                offset,
            }),
        }
    }

    /// Reads an unsigned LEB128 varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                return Err(CodecError::BadVarint { offset: start });
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::BadVarint { offset: start })
    }

    fn varint_u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        let offset = self.pos;
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| CodecError::OutOfRange {
            field,
            value: v,
            offset,
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let len = self.varint()?;
        Ok(self.take(len)?.to_vec())
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let offset = self.pos;
        let bytes = self.bytes()?;
        String::from_utf8(bytes).map_err(|_| CodecError::BadUtf8 { offset })
    }

    /// Decodes one event; `prev_position` as for [`encode_event`].
    pub fn event(&mut self, prev_position: u64) -> Result<EventRecord, CodecError> {
        let start = self.pos;
        let tag = self.u8()?;
        let kind = EventKind::from_tag(tag).ok_or(CodecError::UnknownKind {
            kind: tag,
            offset: start,
        })?;
        let delta_at = self.pos;
        let delta = self.varint()?;
        let position = prev_position
            .checked_add(delta)
            .ok_or(CodecError::PositionOverflow { offset: delta_at })?;
        let event = match kind {
            EventKind::Interrupt => Event::Interrupt { vector: self.u8()? },
            EventKind::SerialInput => Event::SerialInput {
                bytes: self.bytes()?,
            },
            EventKind::SerialHangup => Event::SerialHangup,
            EventKind::HostTime => Event::HostTime {
                nanos: self.varint()?,
            },
            EventKind::WallClock => Event::WallClock {
                unix_nanos: self.varint()?,
            },
            EventKind::Rdtsc => Event::Rdtsc {
                value: self.varint()?,
            },
            EventKind::Rdtscp => Event::Rdtscp {
                value: self.varint()?,
                aux: self.varint_u32("rdtscp aux")?,
            },
            EventKind::Rdrand => {
                let ok = self.bool("rdrand ok")?;
                Event::Rdrand {
                    value: self.u64_le()?,
                    ok,
                }
            }
            EventKind::Rdseed => {
                let ok = self.bool("rdseed ok")?;
                Event::Rdseed {
                    value: self.u64_le()?,
                    ok,
                }
            }
            EventKind::DeviceData => {
                let offset = self.pos;
                let device = self.varint()?;
                let device = u16::try_from(device).map_err(|_| CodecError::OutOfRange {
                    field: "device number",
                    value: device,
                    offset,
                })?;
                Event::DeviceData {
                    device,
                    bytes: self.bytes()?,
                }
            }
            EventKind::StateDigest => Event::StateDigest {
                digest: self.u64_le()?,
            },
            EventKind::End => Event::End {
                reason: self.end_reason()?,
            },
            EventKind::Registers => {
                let offset = self.pos;
                let n = self.varint()?;
                if n > MAX_REGISTERS {
                    return Err(CodecError::OutOfRange {
                        field: "register count",
                        value: n,
                        offset,
                    });
                }
                let regs = (0..n).map(|_| self.varint()).collect::<Result<_, _>>()?;
                Event::Registers { regs }
            }
            EventKind::PmuStop => Event::PmuStop {
                rip: self.varint()?,
                rcx: self.varint()?,
                asynchronous: self.u8()? != 0,
            },
        };
        Ok(EventRecord { position, event })
    }

    fn end_reason(&mut self) -> Result<EndReason, CodecError> {
        let offset = self.pos;
        Ok(match self.u8()? {
            1 => EndReason::GuestExit { status: self.u8()? },
            2 => EndReason::TripleFault {
                rip: self.varint()?,
            },
            3 => EndReason::HaltedForGood {
                rip: self.varint()?,
            },
            4 => EndReason::Reset,
            5 => EndReason::EmulationError {
                rip: self.varint()?,
                detail: self.string()?,
            },
            6 => EndReason::VmmError {
                message: self.string()?,
            },
            7 => EndReason::Interrupted,
            reason => return Err(CodecError::UnknownEndReason { reason, offset }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_edges() {
        for v in [0, 1, 127, 128, 16383, 16384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut d = Decoder::new(&buf);
            assert_eq!(d.varint(), Ok(v));
            assert!(d.is_empty());
        }
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let buf = [0xffu8; 11];
        assert_eq!(
            Decoder::new(&buf).varint(),
            Err(CodecError::BadVarint { offset: 0 })
        );
        // 10th byte may only carry the top bit of a u64.
        let mut buf = vec![0xffu8; 9];
        buf.push(0x02);
        assert_eq!(
            Decoder::new(&buf).varint(),
            Err(CodecError::BadVarint { offset: 0 })
        );
    }

    #[test]
    fn unknown_tag_names_newer_ttvm() {
        let err = Decoder::new(&[200, 0]).event(0).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnknownKind {
                kind: 200,
                offset: 0
            }
        );
        assert!(err.to_string().contains("newer ttvm"));
    }

    #[test]
    fn huge_length_is_truncation_not_allocation() {
        let mut buf = vec![EventKind::SerialInput.tag(), 0];
        put_varint(&mut buf, u64::MAX);
        assert!(matches!(
            Decoder::new(&buf).event(0),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn timer_interrupt_is_four_bytes() {
        let rec = EventRecord {
            position: 1000,
            event: Event::Interrupt { vector: 0x20 },
        };
        assert_eq!(encoded_len(0, &rec), 4);
    }
}
