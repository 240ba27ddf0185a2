//! The port-I/O bus: devices registered by address range, looked up by binary search.

use std::fmt;

/// Names a device slot of the machine (the machine owns the devices; the bus only maps
/// port ranges to these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceId {
    PicMaster,
    PicSlave,
    Pit,
    PortB,
    Rtc,
    Serial,
    /// i8042 data port (0x60).
    I8042Data,
    /// i8042 status/command port (0x64).
    I8042Command,
    DebugExit,
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    base: u16,
    len: u16,
    device: DeviceId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("port range {base:#x}+{len} of {device:?} overlaps {other:?}")]
    Overlap {
        base: u16,
        len: u16,
        device: DeviceId,
        other: DeviceId,
    },
    #[error("port range {base:#x}+{len} of {device:?} is empty or wraps around")]
    BadRange {
        base: u16,
        len: u16,
        device: DeviceId,
    },
}

/// Port ranges, sorted by base, never overlapping.
#[derive(Default, Clone)]
pub struct PioBus {
    ranges: Vec<Range>,
}

impl fmt::Debug for PioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for r in &self.ranges {
            list.entry(&format_args!(
                "{:#x}..{:#x} {:?}",
                r.base,
                u32::from(r.base) + u32::from(r.len),
                r.device
            ));
        }
        list.finish()
    }
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: DeviceId) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(BusError::BadRange { base, len, device });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        let overlaps = |r: &Range| {
            let r_end = u32::from(r.base) + u32::from(r.len);
            u32::from(r.base) < end && u32::from(base) < r_end
        };
        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some(r) = self.ranges.get(neighbour).filter(|r| overlaps(r)) {
                return Err(BusError::Overlap {
                    base,
                    len,
                    device,
                    other: r.device,
                });
            }
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device registered for `port` and the offset of `port` in its range.
    pub fn lookup(&self, port: u16) -> Option<(DeviceId, u16)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= port)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        let offset = port - r.base;
        (offset < r.len).then_some((r.device, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_ranges_and_gaps() {
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, DeviceId::Serial).unwrap();
        bus.insert(0x20, 2, DeviceId::PicMaster).unwrap();
        bus.insert(0x40, 4, DeviceId::Pit).unwrap();
        assert_eq!(bus.lookup(0x3f8), Some((DeviceId::Serial, 0)));
        assert_eq!(bus.lookup(0x3ff), Some((DeviceId::Serial, 7)));
        assert_eq!(bus.lookup(0x400), None);
        assert_eq!(bus.lookup(0x21), Some((DeviceId::PicMaster, 1)));
        assert_eq!(bus.lookup(0x22), None);
        assert_eq!(bus.lookup(0x0), None);
        assert_eq!(bus.lookup(0x43), Some((DeviceId::Pit, 3)));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = PioBus::new();
        bus.insert(0x40, 4, DeviceId::Pit).unwrap();
        assert!(matches!(
            bus.insert(0x43, 1, DeviceId::Rtc),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x3e, 3, DeviceId::Rtc),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x10, 0, DeviceId::Rtc),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0xffff, 2, DeviceId::Rtc),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0x44, 1, DeviceId::Rtc).unwrap();
        bus.insert(0x3f, 1, DeviceId::Post).unwrap();
    }
}
