//! Debug-exit port (0xf4): a byte written by the guest ends the run with that status.

use super::{DeviceCtx, MachineRequest, PioDevice};

#[derive(Debug, Default)]
pub struct DebugExit;

impl PioDevice for DebugExit {
    fn read(&mut self, _offset: u16, _ctx: &mut DeviceCtx) -> u8 {
        0xff
    }

    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        // A wide `out` is split into bytes by the bus: only the first byte is the status.
        if offset == 0 && ctx.request.is_none() {
            ctx.request = Some(MachineRequest::Exit(value));
        }
    }
}
