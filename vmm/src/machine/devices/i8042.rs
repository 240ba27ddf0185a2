//! i8042 keyboard controller (0x60 data, 0x64 status/command), enough for an OS to probe
//! it and to reset the machine: command 0xFE pulses the CPU reset line. No keyboard or
//! mouse is attached: keyboard commands are acknowledged, no scancodes ever arrive.

use serde::{Deserialize, Serialize};

use super::{DeviceCtx, MachineRequest, PioDevice};

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller configuration byte ("command byte").
    pub config: u8,
    /// Bytes waiting to be read from the data port.
    pub output: Vec<u8>,
    /// A controller command waiting for its data byte.
    pub pending_command: Option<u8>,
    pub last_was_command: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            config: 0x45,
            output: Vec::new(),
            pending_command: None,
            last_was_command: false,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct I8042 {
    state: I8042State,
}

impl I8042 {
    pub fn from_state(state: I8042State) -> Self {
        I8042 { state }
    }

    pub fn state(&self) -> &I8042State {
        &self.state
    }

    fn command(&mut self, cmd: u8, ctx: &mut DeviceCtx) {
        match cmd {
            0x20 => self.state.output.push(self.state.config),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.state.pending_command = Some(cmd),
            0xaa => self.state.output.push(0x55), // controller self-test passed
            0xab | 0xa9 => self.state.output.push(0x00), // port tests passed
            0xd0 => self.state.output.push(0x01), // output port: reset line inactive
            0xfe => ctx.request = Some(MachineRequest::Reset),
            // 0xf0-0xff pulse output lines: only bit 0 (reset) matters.
            c if c & 0xf0 == 0xf0 && c & 0x01 == 0 => ctx.request = Some(MachineRequest::Reset),
            // Enable/disable ports and the rest: accepted, nothing to do.
            _ => {}
        }
    }

    fn data(&mut self, value: u8, ctx: &mut DeviceCtx) {
        match self.state.pending_command.take() {
            Some(0x60) => self.state.config = value,
            Some(0xd1) => {
                if value & 0x01 == 0 {
                    ctx.request = Some(MachineRequest::Reset);
                }
            }
            // Write to the keyboard/aux output buffer: echo it back.
            Some(0xd2) | Some(0xd3) => self.state.output.push(value),
            // A byte for the (absent) mouse: nothing answers.
            Some(_) => {}
            // A keyboard command: acknowledge; reset also reports a passed self-test.
            None => {
                self.state.output.push(0xfa);
                if value == 0xff {
                    self.state.output.push(0xaa);
                }
            }
        }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, _ctx: &mut DeviceCtx) -> u8 {
        match offset {
            0 => {
                if self.state.output.is_empty() {
                    0x00
                } else {
                    self.state.output.remove(0)
                }
            }
            4 => {
                let full = if self.state.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                let cmd = if self.state.last_was_command {
                    STATUS_COMMAND
                } else {
                    0
                };
                full | STATUS_SYSTEM_FLAG | STATUS_UNLOCKED | cmd
            }
            _ => 0xff,
        }
    }

    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        match offset {
            0 => {
                self.state.last_was_command = false;
                self.data(value, ctx);
            }
            4 => {
                self.state.last_was_command = true;
                self.command(value, ctx);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let mut kbc = I8042::default();
        let mut ctx = DeviceCtx::default();
        kbc.write(4, 0xfe, &mut ctx);
        assert_eq!(ctx.request, Some(MachineRequest::Reset));
    }

    #[test]
    fn self_test_and_config_byte() {
        let mut kbc = I8042::default();
        let mut ctx = DeviceCtx::default();
        kbc.write(4, 0xaa, &mut ctx);
        assert_eq!(kbc.read(4, &mut ctx) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(kbc.read(0, &mut ctx), 0x55);
        kbc.write(4, 0x60, &mut ctx);
        kbc.write(0, 0x20, &mut ctx);
        kbc.write(4, 0x20, &mut ctx);
        assert_eq!(kbc.read(0, &mut ctx), 0x20);
        assert_eq!(ctx.request, None);
    }
}
