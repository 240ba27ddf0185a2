//! PC devices and the port-I/O bus they sit on.
//!
//! Every device is a deterministic state machine: its only inputs are guest port accesses,
//! the guest-visible time (`DeviceCtx::now_ns`) and, for the UART, bytes handed over by the
//! machine from the host-inputs boundary. That is what lets record and replay drive the same
//! code. Every device state is a serde struct (`DevicesState`) for checkpoints.

pub mod bus;
pub mod debug_exit;
pub mod i8042;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;

use serde::{Deserialize, Serialize};

pub use bus::{DeviceId, PioBus};

/// What a device asks of the machine after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineRequest {
    /// The guest wrote `status` to the debug-exit port.
    Exit(u8),
    /// The guest pulsed the reset line (i8042 command 0xFE).
    Reset,
}

/// Context of one device access: the current guest time, and what the access caused.
#[derive(Debug, Default)]
pub struct DeviceCtx {
    /// Guest-visible time in nanoseconds since the machine started.
    pub now_ns: u64,
    /// Wall-clock time (unix ns) at which the machine started: the RTC's epoch.
    pub boot_wall_clock_ns: u64,
    /// ISA IRQ lines (0-15) that saw a rising edge during the access.
    pub raised_irqs: u16,
    /// Set by a device that ends the run.
    pub request: Option<MachineRequest>,
}

impl DeviceCtx {
    pub fn new(now_ns: u64, boot_wall_clock_ns: u64) -> Self {
        DeviceCtx {
            now_ns,
            boot_wall_clock_ns,
            ..Default::default()
        }
    }

    pub fn raise_irq(&mut self, irq: u8) {
        self.raised_irqs |= 1 << irq;
    }
}

/// A device on the port-I/O bus. `offset` is relative to the start of the range the
/// device was registered for. Accesses are byte-wide: the bus splits wider ones, as the
/// 8-bit ISA bus does.
pub trait PioDevice {
    fn read(&mut self, offset: u16, ctx: &mut DeviceCtx) -> u8;
    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx);
}

/// Port 0x80 (POST code): writes are ignored, reads return 0xff, nothing is logged.
#[derive(Debug, Default)]
pub struct PostPort;

impl PioDevice for PostPort {
    fn read(&mut self, _offset: u16, _ctx: &mut DeviceCtx) -> u8 {
        0xff
    }
    fn write(&mut self, _offset: u16, _value: u8, _ctx: &mut DeviceCtx) {}
}

/// The serializable state of every device of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub pic: pic::PicPairState,
    pub pit: pit::PitState,
    pub rtc: rtc::RtcState,
    pub serial: serial::SerialDeviceState,
    pub i8042: i8042::I8042State,
}
