//! One generic restore round trip over every device: drive each device into a non-default
//! state through its ports, save, restore (from JSON, as checkpoints do) into a fresh set
//! and in place, and check that both copies then answer every port identically.

use ttvm_vmm::machine::devices::{DeviceCtx, DevicesState};
use ttvm_vmm::machine::Devices;

/// (port, value) writes that leave every device in a non-default state.
#[rustfmt::skip]
const SETUP: &[(u16, u8)] = &[
    // PICs: ICW1-4, masks.
    (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfa),
    (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01), (0xa1, 0xff),
    // PIT channel 0: rate generator, lobyte/hibyte; channel 2 gate on via port 0x61.
    (0x43, 0x34), (0x40, 0xa9), (0x40, 0x04), (0x61, 0x01),
    // RTC: CMOS index and a scratch byte; status register B.
    (0x70, 0x0b), (0x71, 0x02), (0x70, 0x40), (0x71, 0x5a),
    // UART: divisor latch, line control, IER, scratch, a byte to transmit.
    (0x3fb, 0x80), (0x3f8, 0x01), (0x3f9, 0x00), (0x3fb, 0x03), (0x3f9, 0x03),
    (0x3ff, 0x77), (0x3f8, b'x'),
    // i8042: a command byte, then a read of it left in the output buffer.
    (0x64, 0x60), (0x60, 0x47), (0x64, 0x20),
];

/// Ports read to compare behaviour (reads with side effects are made on every copy).
const READS: &[u16] = &[
    0x20, 0x21, 0xa0, 0xa1, 0x40, 0x42, 0x61, 0x71, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd,
    0x3fe, 0x3ff, 0x60, 0x64,
];

fn access(d: &mut Devices, port: u16, write: Option<u8>, now: u64) -> u8 {
    let bus = Devices::standard_bus().expect("bus");
    let (id, offset) = bus.lookup(port).expect("mapped port");
    let mut ctx = DeviceCtx::new(now, 1_700_000_000_000_000_000);
    match write {
        Some(v) => {
            d.write(id, offset, v, &mut ctx);
            0
        }
        None => d.read(id, offset, &mut ctx),
    }
}

fn answers(d: &mut Devices) -> Vec<u8> {
    READS
        .iter()
        .map(|&p| access(d, p, None, 5_000_000))
        .collect()
}

#[test]
fn every_device_state_round_trips() {
    let mut original = Devices::new(64 << 20, Box::new(std::io::sink()));
    for &(port, value) in SETUP {
        access(&mut original, port, Some(value), 1_000);
    }
    original
        .serial
        .receive(b"in", &mut DeviceCtx::new(1_000, 0));
    let state = original.state();
    let default = Devices::new(64 << 20, Box::new(std::io::sink())).state();
    assert_ne!(state.pic, default.pic);
    assert_ne!(state.pit, default.pit);
    assert_ne!(state.rtc, default.rtc);
    assert_ne!(state.serial, default.serial);
    assert_ne!(state.i8042, default.i8042);
    let json = serde_json::to_string(&state).expect("serialize");
    let back: DevicesState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, state);

    let mut fresh = Devices::restore(&back, Box::new(std::io::sink())).expect("restore");
    let mut in_place = Devices::new(64 << 20, Box::new(std::io::sink()));
    in_place.restore_in_place(&back).expect("restore in place");
    assert_eq!(fresh.state(), state);
    assert_eq!(in_place.state(), state);

    let expected = answers(&mut original);
    assert_eq!(answers(&mut fresh), expected);
    assert_eq!(answers(&mut in_place), expected);
    assert_eq!(fresh.state(), original.state());
    assert_eq!(in_place.state(), original.state());
}
