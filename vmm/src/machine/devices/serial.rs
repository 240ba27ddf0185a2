//! COM1: a 16550A UART (vm-superio) at 0x3f8, IRQ4.
//!
//! Output bytes go to the machine's serial sink (stdout, a file, a test buffer) as the guest
//! writes them. Input bytes are handed over by the machine, from the host-inputs boundary,
//! whenever the receive FIFO has room. When the input source is exhausted the machine
//! "hangs up" the line: the modem-status register then reports carrier lost (DCD low), so
//! a guest can tell the end of its input from a pause in it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::{DeviceCtx, PioDevice};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
const MSR_OFFSET: u8 = 6;
const MCR_OFFSET: u8 = 4;
const MSR_DCD: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// vm-superio's interrupt trigger: remembers that the UART raised its interrupt line.
#[derive(Debug, Clone, Default)]
pub struct IrqFlag(Arc<AtomicBool>);

impl Trigger for IrqFlag {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl IrqFlag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Output that fails records its error here for the machine to report (no lost data goes
/// unnoticed).
struct CheckedOutput {
    out: SerialOutput,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl Write for CheckedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf).inspect_err(|e| self.record(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().inspect_err(|e| self.record(e))
    }
}

impl CheckedOutput {
    fn record(&self, e: &io::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        }
    }
}

/// Serializable UART state (vm-superio's `SerialState`, plus the line's carrier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
    /// The input source reached its end: carrier dropped.
    pub hung_up: bool,
}

impl Default for SerialDeviceState {
    fn default() -> Self {
        Self::from_superio(&SerialState::default(), false)
    }
}

impl SerialDeviceState {
    fn from_superio(s: &SerialState, hung_up: bool) -> Self {
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
            hung_up,
        }
    }

    fn to_superio(&self) -> SerialState {
        SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial state has {0} bytes in its receive FIFO, more than a 16550A holds")]
    FifoOverflow(usize),
    #[error("writing the guest's serial output failed: {0}")]
    Output(io::Error),
}

pub struct SerialDevice {
    uart: Serial<IrqFlag, NoEvents, CheckedOutput>,
    irq: IrqFlag,
    hung_up: bool,
    output_error: Arc<Mutex<Option<io::Error>>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("state", &self.state())
            .finish()
    }
}

impl SerialDevice {
    pub fn new(out: SerialOutput) -> Self {
        Self::from_state(&SerialDeviceState::default(), out)
            .unwrap_or_else(|_| unreachable!("the default state has an empty FIFO"))
    }

    pub fn from_state(state: &SerialDeviceState, out: SerialOutput) -> Result<Self, SerialError> {
        let irq = IrqFlag::default();
        let output_error = Arc::new(Mutex::new(None));
        let out = CheckedOutput {
            out,
            error: output_error.clone(),
        };
        let uart = Serial::from_state(&state.to_superio(), irq.clone(), NoEvents, out)
            .map_err(|_| SerialError::FifoOverflow(state.in_buffer.len()))?;
        Ok(SerialDevice {
            uart,
            irq,
            hung_up: state.hung_up,
            output_error,
        })
    }

    /// Gives back the output the device writes to (to rebuild it from another state).
    pub fn into_output(self) -> SerialOutput {
        self.uart.into_writer().out
    }

    pub fn state(&self) -> SerialDeviceState {
        SerialDeviceState::from_superio(&self.uart.state(), self.hung_up)
    }

    /// Room left in the receive FIFO.
    pub fn rx_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Hands received bytes to the UART; returns how many fit.
    pub fn receive(&mut self, bytes: &[u8], ctx: &mut DeviceCtx) -> usize {
        let n = self.uart.enqueue_raw_bytes(bytes).unwrap_or(0);
        self.forward_irq(ctx);
        n
    }

    /// The input source ended: drop the carrier.
    pub fn hang_up(&mut self) {
        self.hung_up = true;
    }

    pub fn is_hung_up(&self) -> bool {
        self.hung_up
    }

    /// The first output error since the last call, if any.
    pub fn take_output_error(&self) -> Option<SerialError> {
        self.output_error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .map(SerialError::Output)
    }

    fn forward_irq(&mut self, ctx: &mut DeviceCtx) {
        if self.irq.take() {
            ctx.raise_irq(COM1_IRQ);
        }
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, ctx: &mut DeviceCtx) -> u8 {
        let offset = offset as u8;
        let mut value = self.uart.read(offset);
        if offset == MSR_OFFSET && self.hung_up && self.uart.read(MCR_OFFSET) & MCR_LOOP == 0 {
            value &= !MSR_DCD;
        }
        self.forward_irq(ctx);
        value
    }

    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        // Output errors are kept by `CheckedOutput`; the machine ends the run on them.
        let _ = self.uart.write(offset as u8, value);
        self.forward_irq(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_and_input_raises_irq4() {
        let cap = Capture::default();
        let mut dev = SerialDevice::new(Box::new(cap.clone()));
        let mut ctx = DeviceCtx::default();
        dev.write(0, b'h', &mut ctx);
        dev.write(0, b'i', &mut ctx);
        assert_eq!(&*cap.0.lock().unwrap(), b"hi");
        dev.write(1, 0x01, &mut ctx); // IER: RX data available
        let mut ctx = DeviceCtx::default();
        assert_eq!(dev.receive(b"ab", &mut ctx), 2);
        assert_eq!(ctx.raised_irqs, 1 << COM1_IRQ);
        assert_eq!(dev.read(5, &mut ctx) & 1, 1, "LSR data ready");
        assert_eq!(dev.read(0, &mut ctx), b'a');
        assert_eq!(dev.read(0, &mut ctx), b'b');
        assert_eq!(dev.read(5, &mut ctx) & 1, 0);
    }

    #[test]
    fn hang_up_drops_dcd_and_survives_state_round_trip() {
        let mut dev = SerialDevice::new(Box::new(io::sink()));
        let mut ctx = DeviceCtx::default();
        assert_eq!(dev.read(6, &mut ctx) & MSR_DCD, MSR_DCD);
        dev.hang_up();
        assert_eq!(dev.read(6, &mut ctx) & MSR_DCD, 0);
        let restored = SerialDevice::from_state(&dev.state(), Box::new(io::sink())).unwrap();
        assert!(restored.is_hung_up());
    }

    #[test]
    fn output_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut dev = SerialDevice::new(Box::new(Broken));
        dev.write(0, b'x', &mut DeviceCtx::default());
        assert!(matches!(
            dev.take_output_error(),
            Some(SerialError::Output(_))
        ));
        assert!(dev.take_output_error().is_none());
    }
}
