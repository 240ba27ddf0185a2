//! MC146818 CMOS RTC and NVRAM (index port 0x70, data port 0x71).
//!
//! The clock reads guest wall-clock time = the machine's boot wall clock + guest time since
//! boot, in the format status register B selects (BCD or binary, 12 or 24 hours). Status A's
//! update-in-progress bit is set in the last 244 us of every second, as on the real part.
//! A guest that sets the clock (B.SET, write time registers, clear B.SET) moves an offset.
//! NVRAM bytes 0x0e-0x7f are plain memory, with the PC's memory-size bytes filled in.
//! Not modelled: alarm, periodic and update-ended interrupts (IRQ8).

use serde::{Deserialize, Serialize};

use super::{DeviceCtx, PioDevice};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const B_SET: u8 = 0x80;
const B_24H: u8 = 0x02;
const B_BINARY: u8 = 0x04;
const A_UIP: u8 = 0x80;
const UIP_WINDOW_NS: u64 = 244_000;
const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    pub index: u8,
    /// NVRAM: time registers are recomputed on read unless B.SET freezes them.
    pub cmos: Vec<u8>,
    /// Seconds added to the boot wall clock by a guest that set the time.
    pub offset_s: i64,
}

#[derive(Debug, Clone)]
pub struct Rtc {
    state: RtcState,
}

impl Rtc {
    /// A powered-on RTC for a machine with `mem_bytes` of RAM (for the NVRAM size bytes).
    pub fn new(mem_bytes: u64) -> Self {
        let mut cmos = vec![0u8; 128];
        cmos[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        cmos[usize::from(REG_B)] = B_24H;
        cmos[usize::from(REG_D)] = 0x80; // valid RAM and time
        let kib = mem_bytes / 1024;
        let base_kib: u64 = 640;
        let ext_kib = kib.saturating_sub(1024).min(0xffff);
        let above_16m = (mem_bytes.saturating_sub(16 << 20) >> 16).min(0xffff);
        for (reg, value) in [
            (0x15, base_kib & 0xff),
            (0x16, base_kib >> 8),
            (0x17, ext_kib & 0xff),
            (0x18, ext_kib >> 8),
            (0x30, ext_kib & 0xff),
            (0x31, ext_kib >> 8),
            (0x34, above_16m & 0xff),
            (0x35, above_16m >> 8),
        ] {
            cmos[reg] = value as u8;
        }
        Rtc {
            state: RtcState {
                index: 0,
                cmos,
                offset_s: 0,
            },
        }
    }

    pub fn from_state(state: RtcState) -> Self {
        let mut state = state;
        state.cmos.resize(128, 0);
        Rtc { state }
    }

    pub fn state(&self) -> &RtcState {
        &self.state
    }

    fn reg(&self, reg: u8) -> u8 {
        self.state.cmos[usize::from(reg & 0x7f)]
    }

    fn encode(&self, value: u8) -> u8 {
        if self.reg(REG_B) & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.reg(REG_B) & B_BINARY != 0 {
            value
        } else {
            (value >> 4) * 10 + (value & 0x0f)
        }
    }

    fn encode_hours(&self, hours: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(hours);
        }
        let pm = hours >= 12;
        let h12 = match hours % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if pm { 0x80 } else { 0 }
    }

    fn decode_hours(&self, value: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(value);
        }
        let h12 = self.decode(value & 0x7f) % 12;
        if value & 0x80 != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    /// Guest wall-clock time (unix seconds, nanoseconds within the second).
    fn wall_clock(&self, ctx: &DeviceCtx) -> (i64, u64) {
        let ns = ctx.boot_wall_clock_ns.saturating_add(ctx.now_ns);
        let secs = (ns / NS_PER_S) as i64 + self.state.offset_s;
        (secs, ns % NS_PER_S)
    }

    fn time_register(&self, reg: u8, ctx: &DeviceCtx) -> u8 {
        let (secs, _) = self.wall_clock(ctx);
        let t = CivilTime::from_unix(secs);
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode((t.year % 100) as u8),
            _ => self.encode((t.year / 100) as u8),
        }
    }

    /// B.SET cleared: the time the guest wrote becomes the clock.
    fn commit_time(&mut self, ctx: &DeviceCtx) {
        let year = i64::from(self.decode(self.reg(REG_CENTURY))) * 100
            + i64::from(self.decode(self.reg(REG_YEAR)));
        let t = CivilTime {
            year,
            month: self.decode(self.reg(REG_MONTH)),
            day: self.decode(self.reg(REG_DAY)),
            hour: self.decode_hours(self.reg(REG_HOURS)),
            minute: self.decode(self.reg(REG_MINUTES)),
            second: self.decode(self.reg(REG_SECONDS)),
            weekday: 0,
        };
        let (now, _) = self.wall_clock(ctx);
        self.state.offset_s += t.to_unix() - now;
    }

    /// Copies the live time into the time registers (entering B.SET).
    fn freeze_time(&mut self, ctx: &DeviceCtx) {
        for reg in [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ] {
            self.state.cmos[usize::from(reg)] = self.time_register(reg, ctx);
        }
    }
}

fn is_time_register(reg: u8) -> bool {
    matches!(
        reg,
        REG_SECONDS
            | REG_MINUTES
            | REG_HOURS
            | REG_WEEKDAY
            | REG_DAY
            | REG_MONTH
            | REG_YEAR
            | REG_CENTURY
    )
}

impl PioDevice for Rtc {
    fn read(&mut self, offset: u16, ctx: &mut DeviceCtx) -> u8 {
        if offset == 0 {
            // The index register is write-only; reads float.
            return 0xff;
        }
        let reg = self.state.index;
        let frozen = self.reg(REG_B) & B_SET != 0;
        match reg {
            r if is_time_register(r) && !frozen => self.time_register(r, ctx),
            REG_A => {
                let (_, ns) = self.wall_clock(ctx);
                let uip = !frozen && ns >= NS_PER_S - UIP_WINDOW_NS;
                (self.reg(REG_A) & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                // Interrupt flags: none are raised; reading clears them.
                let value = self.reg(REG_C);
                self.state.cmos[usize::from(REG_C)] = 0;
                value
            }
            r => self.reg(r),
        }
    }

    fn write(&mut self, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        if offset == 0 {
            // Bit 7 is the NMI mask: there is no NMI source, so it is ignored.
            self.state.index = value & 0x7f;
            return;
        }
        let reg = self.state.index;
        match reg {
            REG_A => self.state.cmos[usize::from(REG_A)] = value & !A_UIP,
            REG_B => {
                let was_set = self.reg(REG_B) & B_SET != 0;
                let set = value & B_SET != 0;
                if set && !was_set {
                    self.freeze_time(ctx);
                }
                self.state.cmos[usize::from(REG_B)] = value;
                if was_set && !set {
                    self.commit_time(ctx);
                }
            }
            REG_C | REG_D => {}
            r if is_time_register(r) && self.reg(REG_B) & B_SET == 0 => {
                // Writing a time register without B.SET: the written field takes effect
                // at once (freeze, patch, commit).
                self.freeze_time(ctx);
                self.state.cmos[usize::from(r)] = value;
                self.commit_time(ctx);
            }
            r => self.state.cmos[usize::from(r)] = value,
        }
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    pub weekday: u8,
}

impl CivilTime {
    /// Days-from-civil and back, after Howard Hinnant's public-domain algorithms.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        CivilTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    pub fn to_unix(&self) -> i64 {
        let month = i64::from(self.month.clamp(1, 12));
        let year = self.year - i64::from(month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400);
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day.max(1)) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 22:41:07 UTC, a Monday.
    const WALL: u64 = 1_795_473_667 * NS_PER_S;

    fn read(rtc: &mut Rtc, reg: u8, ctx: &mut DeviceCtx) -> u8 {
        rtc.write(0, reg, ctx);
        rtc.read(1, ctx)
    }

    #[test]
    fn civil_time_round_trips() {
        for secs in [0i64, 951_782_400, 1_795_473_667, 4_102_444_800, -86_400] {
            assert_eq!(CivilTime::from_unix(secs).to_unix(), secs);
        }
        let t = CivilTime::from_unix(1_795_473_667);
        assert_eq!((t.year, t.month, t.day), (2026, 11, 23));
        assert_eq!((t.hour, t.minute, t.second, t.weekday), (22, 41, 7, 2));
    }

    #[test]
    fn reads_bcd_time_by_default() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(2 * NS_PER_S, WALL);
        assert_eq!(read(&mut rtc, REG_SECONDS, &mut ctx), 0x09);
        assert_eq!(read(&mut rtc, REG_MINUTES, &mut ctx), 0x41);
        assert_eq!(read(&mut rtc, REG_HOURS, &mut ctx), 0x22);
        assert_eq!(read(&mut rtc, REG_DAY, &mut ctx), 0x23);
        assert_eq!(read(&mut rtc, REG_MONTH, &mut ctx), 0x11);
        assert_eq!(read(&mut rtc, REG_YEAR, &mut ctx), 0x26);
        assert_eq!(read(&mut rtc, REG_CENTURY, &mut ctx), 0x20);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        rtc.write(0, REG_B, &mut ctx);
        rtc.write(1, B_BINARY, &mut ctx);
        assert_eq!(read(&mut rtc, REG_HOURS, &mut ctx), 0x80 | 10);
        assert_eq!(read(&mut rtc, REG_MINUTES, &mut ctx), 41);
    }

    #[test]
    fn uip_is_set_just_before_the_second_turns() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(NS_PER_S - 100_000, WALL);
        assert_eq!(read(&mut rtc, REG_A, &mut ctx) & A_UIP, A_UIP);
        let mut ctx = DeviceCtx::new(NS_PER_S + 100_000, WALL);
        assert_eq!(read(&mut rtc, REG_A, &mut ctx) & A_UIP, 0);
    }

    #[test]
    fn guest_can_set_the_clock() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        rtc.write(0, REG_B, &mut ctx);
        rtc.write(1, B_24H | B_SET, &mut ctx);
        rtc.write(0, REG_YEAR, &mut ctx);
        rtc.write(1, 0x30, &mut ctx);
        rtc.write(0, REG_B, &mut ctx);
        rtc.write(1, B_24H, &mut ctx);
        let mut later = DeviceCtx::new(5 * NS_PER_S, WALL);
        assert_eq!(read(&mut rtc, REG_YEAR, &mut later), 0x30);
        assert_eq!(read(&mut rtc, REG_SECONDS, &mut later), 0x12);
    }

    #[test]
    fn nvram_holds_memory_size() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        let lo = read(&mut rtc, 0x34, &mut ctx);
        let hi = read(&mut rtc, 0x35, &mut ctx);
        assert_eq!(u16::from(lo) | (u16::from(hi) << 8), 768);
        rtc.write(0, 0x40, &mut ctx);
        rtc.write(1, 0xab, &mut ctx);
        assert_eq!(read(&mut rtc, 0x40, &mut ctx), 0xab);
    }
}
