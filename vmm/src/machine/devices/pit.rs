//! Intel 8254 programmable interval timer (ports 0x40-0x43; channel 0 drives IRQ0) and
//! port 0x61 ("port B": channel 2 gate, speaker, channel 2 output, refresh toggle).
//!
//! Counters are not ticked: each channel remembers when (in guest nanoseconds) its count
//! was loaded and derives the current count from the guest time of the access. Channel 0
//! raises IRQ0 on each rising edge of its output; the machine asks for the next deadline
//! and polls at or after it, so missed periods coalesce into one edge, as lost ticks do on
//! real hardware.
//!
//! Modelled: modes 0, 2, 3 and 4 on every channel (1 and 5 are treated as 0 and 4, their
//! gate-trigger being unused on PC channels 0/1), lobyte/hibyte/word access, counter latch,
//! read-back (count and status), binary counting (BCD counting is accepted and counted in
//! binary; no PC OS uses it).

use serde::{Deserialize, Serialize};

use super::{DeviceCtx, PioDevice};

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;
const NS_PER_S: u128 = 1_000_000_000;
pub const PIT_IRQ: u8 = 0;

/// Ticks of the PIT clock in `ns` nanoseconds (rounded down).
pub fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_S) as u64
}

/// The first nanosecond at which `ticks` ticks have elapsed (rounded up).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * NS_PER_S).div_ceil(u128::from(PIT_HZ)) as u64
}

/// How the guest reads/writes a channel's 16-bit count through the 8-bit port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    LowByte,
    HighByte,
    #[default]
    LowThenHigh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub mode: u8,
    pub access: Access,
    pub bcd: bool,
    /// The count loaded (0 stands for 65536), or None before the first load.
    pub reload: Option<u32>,
    /// Guest time at which `reload` was loaded.
    pub load_ns: u64,
    /// Low byte of a word write waiting for its high byte.
    pub write_low: Option<u8>,
    /// Latched count (counter-latch or read-back) still to be read, with the bytes left.
    pub latched: Option<(u16, u8)>,
    /// Latched status byte (read-back) for the next read.
    pub latched_status: Option<u8>,
    /// Next read of a word count returns the high byte.
    pub read_high_next: bool,
    /// Gate input (channel 2 only is controllable, via port 0x61).
    pub gate: bool,
    /// For channel 0: tick count (since load) of the next IRQ edge not yet delivered.
    pub next_irq_tick: Option<u64>,
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            mode: 0,
            access: Access::LowThenHigh,
            bcd: false,
            reload: None,
            load_ns: 0,
            write_low: None,
            latched: None,
            latched_status: None,
            read_high_next: false,
            gate: true,
            next_irq_tick: None,
        }
    }
}

impl ChannelState {
    fn period(&self) -> Option<u64> {
        self.reload
            .map(|r| if r == 0 { 0x1_0000 } else { u64::from(r) })
    }

    fn elapsed_ticks(&self, now_ns: u64) -> u64 {
        ns_to_ticks(now_ns.saturating_sub(self.load_ns))
    }

    /// Periodic modes (2, 3, and 6/7 which alias them).
    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    /// The current count as the guest reads it.
    fn count(&self, now_ns: u64) -> u16 {
        let Some(period) = self.period() else {
            return 0;
        };
        if !self.gate {
            return period as u16;
        }
        let t = self.elapsed_ticks(now_ns);
        let value = match self.mode {
            2 => period - t % period,
            // Square wave: the count runs down by two, twice per period.
            3 => {
                let half = period.div_ceil(2);
                let phase = t % period;
                let within = if phase < half { phase } else { phase - half };
                period.saturating_sub(2 * within) & !1
            }
            // One-shot modes: count down then wrap through 0xffff.
            _ => period.wrapping_sub(t) & 0xffff,
        };
        value as u16
    }

    /// The channel's OUT pin.
    fn output(&self, now_ns: u64) -> bool {
        let Some(period) = self.period() else {
            return false;
        };
        let t = self.elapsed_ticks(now_ns);
        match self.mode {
            0 | 1 => t >= period,
            2 => t % period != period - 1,
            3 => t % period < period.div_ceil(2),
            _ => t != period,
        }
    }

    /// Tick (since load) of the first IRQ edge for a freshly loaded count.
    fn first_irq_tick(&self) -> Option<u64> {
        let period = self.period()?;
        match self.mode {
            2 | 3 => Some(period),
            0 | 1 | 4 | 5 => Some(period),
            _ => None,
        }
    }

    fn status(&self, now_ns: u64) -> u8 {
        let access = match self.access {
            Access::LowByte => 1,
            Access::HighByte => 2,
            Access::LowThenHigh => 3,
        };
        (u8::from(self.output(now_ns)) << 7)
            | (u8::from(self.reload.is_none()) << 6)
            | (access << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn latch(&mut self, now_ns: u64) {
        if self.latched.is_none() {
            let bytes = if self.access == Access::LowThenHigh {
                2
            } else {
                1
            };
            self.latched = Some((self.count(now_ns), bytes));
        }
    }

    fn load(&mut self, value: u32, now_ns: u64) {
        self.reload = Some(value);
        self.load_ns = now_ns;
        self.next_irq_tick = self.first_irq_tick();
    }

    fn write_count(&mut self, byte: u8, now_ns: u64) {
        match self.access {
            Access::LowByte => self.load(u32::from(byte), now_ns),
            Access::HighByte => self.load(u32::from(byte) << 8, now_ns),
            Access::LowThenHigh => match self.write_low.take() {
                None => self.write_low = Some(byte),
                Some(low) => self.load(u32::from(low) | (u32::from(byte) << 8), now_ns),
            },
        }
    }

    fn read(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, from_latch) = match self.latched {
            Some((v, _)) => (v, true),
            None => (self.count(now_ns), false),
        };
        let byte = match self.access {
            Access::LowByte => value as u8,
            Access::HighByte => (value >> 8) as u8,
            Access::LowThenHigh => {
                let high = self.read_high_next;
                self.read_high_next = !high;
                if high {
                    (value >> 8) as u8
                } else {
                    value as u8
                }
            }
        };
        if from_latch {
            if let Some((v, left)) = self.latched {
                self.latched = (left > 1).then_some((v, left - 1));
            }
        }
        byte
    }

    fn set_control(&mut self, control: u8) {
        let access = match (control >> 4) & 3 {
            1 => Access::LowByte,
            2 => Access::HighByte,
            _ => Access::LowThenHigh,
        };
        let mode = (control >> 1) & 7;
        *self = ChannelState {
            mode: if mode >= 6 { mode - 4 } else { mode },
            access,
            bcd: control & 1 != 0,
            gate: self.gate,
            ..ChannelState::default()
        };
    }

    /// Deadline (guest ns) of the next IRQ edge, if the channel will raise one.
    fn next_irq_ns(&self) -> Option<u64> {
        if !self.gate {
            return None;
        }
        self.next_irq_tick
            .map(|t| self.load_ns.saturating_add(ticks_to_ns(t)))
    }

    /// Whether an edge happened at or before `now_ns`; advances past `now_ns` (coalescing).
    fn take_irq(&mut self, now_ns: u64) -> bool {
        let Some(next) = self.next_irq_tick else {
            return false;
        };
        if !self.gate || self.elapsed_ticks(now_ns) < next {
            return false;
        }
        self.next_irq_tick = match (self.periodic(), self.period()) {
            (true, Some(period)) => {
                let t = self.elapsed_ticks(now_ns);
                Some((t / period + 1) * period)
            }
            _ => None,
        };
        true
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    pub channels: [ChannelState; 3],
    /// Port 0x61 bit 1: speaker data enable (stored, not audible).
    pub speaker_data: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Pit {
    state: PitState,
}

impl Pit {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_state(state: PitState) -> Self {
        Pit { state }
    }

    pub fn state(&self) -> &PitState {
        &self.state
    }

    /// Guest time of channel 0's next IRQ edge.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.state.channels[0].next_irq_ns()
    }

    /// Raises IRQ0 in `ctx` if channel 0's output rose since the last poll.
    pub fn poll(&mut self, ctx: &mut DeviceCtx) {
        if self.state.channels[0].take_irq(ctx.now_ns) {
            ctx.raise_irq(PIT_IRQ);
        }
    }

    fn read_back(&mut self, control: u8, now_ns: u64) {
        for (i, ch) in self.state.channels.iter_mut().enumerate() {
            if control & (2 << i) == 0 {
                continue;
            }
            if control & 0x10 == 0 {
                ch.latched_status.get_or_insert(ch.status(now_ns));
            }
            if control & 0x20 == 0 {
                ch.latch(now_ns);
            }
        }
    }

    fn write_control(&mut self, value: u8, now_ns: u64) {
        let select = value >> 6;
        if select == 3 {
            self.read_back(value, now_ns);
            return;
        }
        let ch = &mut self.state.channels[usize::from(select)];
        if (value >> 4) & 3 == 0 {
            ch.latch(now_ns);
        } else {
            ch.set_control(value);
        }
    }
}

impl PioDevice for Pit {
    fn read(&mut self, offset: u16, ctx: &mut DeviceCtx) -> u8 {
        match offset {
            0..=2 => self.state.channels[usize::from(offset)].read(ctx.now_ns),
            // The control word register is write-only.
            _ => 0xff,
        }
    }

    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        match offset {
            0..=2 => self.state.channels[usize::from(offset)].write_count(value, ctx.now_ns),
            _ => self.write_control(value, ctx.now_ns),
        }
    }
}

/// Refresh-request toggle period (port 0x61 bit 4), about 15 us on a PC.
const REFRESH_TOGGLE_NS: u64 = 15_085;

/// Port 0x61 ("port B"), a view of the PIT's channel 2 gate/output.
pub struct PortB<'a>(pub &'a mut Pit);

impl PioDevice for PortB<'_> {
    fn read(&mut self, _offset: u16, ctx: &mut DeviceCtx) -> u8 {
        let ch2 = &self.0.state.channels[2];
        let refresh = (ctx.now_ns / REFRESH_TOGGLE_NS) & 1 == 1;
        u8::from(ch2.gate)
            | (u8::from(self.0.state.speaker_data) << 1)
            | (u8::from(refresh) << 4)
            | (u8::from(ch2.output(ctx.now_ns)) << 5)
    }

    fn write(&mut self, _offset: u16, value: u8, ctx: &mut DeviceCtx) {
        let ch2 = &mut self.0.state.channels[2];
        let gate = value & 1 != 0;
        if gate && !ch2.gate {
            // A rising gate restarts the count (modes 1, 2, 3, 5 on real parts; the
            // one-shot use in PIT calibration loops expects this too).
            if let Some(reload) = ch2.reload {
                ch2.load(reload, ctx.now_ns);
            }
        }
        ch2.gate = gate;
        self.0.state.speaker_data = value & 2 != 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn program(pit: &mut Pit, control: u8, count: u16, now_ns: u64) {
        let mut ctx = DeviceCtx::new(now_ns, 0);
        pit.write(3, control, &mut ctx);
        pit.write(0, count as u8, &mut ctx);
        pit.write(0, (count >> 8) as u8, &mut ctx);
    }

    #[test]
    fn rate_generator_raises_irq_every_period_and_coalesces() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 1193, 0); // ch0, lo/hi, mode 2, ~1 kHz
        let first = pit.next_deadline_ns().unwrap();
        assert!((999_000..1_001_000).contains(&first), "{first}");
        let mut ctx = DeviceCtx::new(first - 1, 0);
        pit.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 0);
        let mut ctx = DeviceCtx::new(first, 0);
        pit.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 1);
        // Five periods missed: one edge, next deadline after now.
        let late = first + 5 * MS + 10;
        let mut ctx = DeviceCtx::new(late, 0);
        pit.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 1);
        assert!(pit.next_deadline_ns().unwrap() > late);
    }

    #[test]
    fn latched_count_reads_back_low_then_high() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 10_000, 0);
        let now = ticks_to_ns(2_500);
        let mut ctx = DeviceCtx::new(now, 0);
        pit.write(3, 0x00, &mut ctx); // latch ch0
        let later = DeviceCtx::new(now + MS, 0);
        let mut ctx = later;
        let lo = pit.read(0, &mut ctx);
        let hi = pit.read(0, &mut ctx);
        assert_eq!(u16::from(lo) | (u16::from(hi) << 8), 7_500);
        // After the latch is consumed, reads are live again.
        let lo = pit.read(0, &mut ctx);
        let hi = pit.read(0, &mut ctx);
        assert_ne!(u16::from(lo) | (u16::from(hi) << 8), 7_500);
    }

    #[test]
    fn one_shot_fires_once() {
        let mut pit = Pit::new();
        program(&mut pit, 0x30, 100, 0); // mode 0
        let deadline = pit.next_deadline_ns().unwrap();
        let mut ctx = DeviceCtx::new(deadline, 0);
        pit.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 1);
        assert_eq!(pit.next_deadline_ns(), None);
    }

    #[test]
    fn read_back_status_reports_mode_and_null_count() {
        let mut pit = Pit::new();
        let mut ctx = DeviceCtx::new(0, 0);
        pit.write(3, 0xb6, &mut ctx); // ch2, lo/hi, mode 3
        pit.write(3, 0xe8, &mut ctx); // read-back status of ch2
        assert_eq!(pit.read(2, &mut ctx), 0x40 | 0x30 | (3 << 1));
    }

    #[test]
    fn port_b_gate_restarts_channel_two() {
        let mut pit = Pit::new();
        let mut ctx = DeviceCtx::new(0, 0);
        pit.write(3, 0xb0, &mut ctx); // ch2 mode 0
        pit.write(2, 0xff, &mut ctx);
        pit.write(2, 0xff, &mut ctx);
        PortB(&mut pit).write(0, 0x00, &mut ctx);
        let mut ctx = DeviceCtx::new(10 * MS, 0);
        PortB(&mut pit).write(0, 0x01, &mut ctx);
        let out = PortB(&mut pit).read(0, &mut ctx);
        assert_eq!(
            out & 0x21,
            0x01,
            "gate on, output low right after the restart"
        );
        let mut ctx = DeviceCtx::new(10 * MS + 60 * MS, 0);
        assert_eq!(PortB(&mut pit).read(0, &mut ctx) & 0x20, 0x20);
    }
}
