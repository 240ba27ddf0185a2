//! MC146818 CMOS RTC and NVRAM (index port 0x70, data port 0x71).
//!
//! The clock reads guest wall-clock time = the machine's boot wall clock + guest time since
//! boot, in the format status register B selects (BCD or binary, 12 or 24 hours). Status A's
//! update-in-progress bit is set in the last 244 us of every second, as on the real part.
//! A guest that sets the clock (B.SET, write time registers, clear B.SET) moves an offset.
//! NVRAM bytes 0x0e-0x7f are plain memory, with the PC's memory-size bytes filled in.
//!
//! Interrupts (IRQ8): periodic (rate from status A's RS bits, ticks at multiples of the
//! period of guest time), update-ended (each wall-clock second) and alarm (at the second
//! that matches the alarm registers; 0xC0-0xFF is "any"). Their flags (PF, UF, AF) appear
//! in status C whether enabled or not; an enabled flag sets IRQF there and raises IRQ8
//! once, until the guest reads C (which clears every flag), as on the real part. The
//! oscillator divider bits of status A are not modelled (the clock always runs).

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

const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS_ALARM: u8 = 0x05;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// The RTC's ISA interrupt line.
pub const RTC_IRQ: u8 = 8;
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
    /// Guest time up to which interrupt flags have been brought up to date (they move only
    /// for a guest that enables an RTC interrupt or reads status C).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flags_ns: u64,
    /// The boot wall clock's position within its second (where wall-clock seconds turn,
    /// in guest time), learnt when flags are updated.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wall_phase_ns: u64,
}

/// Zero-valued fields are left out of the serialized state, so the state (and the
/// digests over it) of a guest that never uses the RTC's interrupts is what it was before
/// they were modelled: older traces still verify.
fn is_zero(v: &u64) -> bool {
    *v == 0
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
                flags_ns: 0,
                wall_phase_ns: 0,
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

/// The periodic interrupt's period for rate-select bits `rs`, as (numerator,
/// denominator) of nanoseconds: 2^(rs-1) / 32768 s; 1 and 2 mean 2^7 and 2^8; 0 is off.
fn periodic_period(rs: u8) -> Option<(u128, u128)> {
    let shift = match rs & 0x0f {
        0 => return None,
        1 => 7,
        2 => 8,
        r => u32::from(r) - 1,
    };
    Some(((1u128 << shift) * u128::from(NS_PER_S), 32_768))
}

impl Rtc {
    /// Periodic ticks completed by guest time `ns`.
    fn periodic_ticks(&self, ns: u64) -> Option<u128> {
        let (num, den) = periodic_period(self.reg(REG_A))?;
        Some(u128::from(ns) * den / num)
    }

    /// Wall-clock seconds that turned by guest time `ns`.
    fn seconds_turned(&self, ns: u64) -> u64 {
        (ns + self.state.wall_phase_ns) / NS_PER_S
    }

    /// Whether the alarm registers match the clock at guest time `ns`.
    fn alarm_matches(&self, ns: u64, ctx: &DeviceCtx) -> bool {
        let at = DeviceCtx::new(ns, ctx.boot_wall_clock_ns);
        [
            (REG_SECONDS_ALARM, REG_SECONDS),
            (REG_MINUTES_ALARM, REG_MINUTES),
            (REG_HOURS_ALARM, REG_HOURS),
        ]
        .iter()
        .all(|&(alarm, reg)| {
            let want = self.reg(alarm);
            want >= 0xc0 || want == self.time_register(reg, &at)
        })
    }

    /// Brings the interrupt flags up to guest time `ctx.now_ns`; raises IRQ8 when an
    /// enabled flag is newly set.
    fn update_flags(&mut self, ctx: &mut DeviceCtx) {
        self.state.wall_phase_ns = ctx.boot_wall_clock_ns % NS_PER_S;
        let (from, to) = (self.state.flags_ns, ctx.now_ns);
        if to <= from {
            return;
        }
        self.state.flags_ns = to;
        let mut flags = 0;
        if let (Some(a), Some(b)) = (self.periodic_ticks(from), self.periodic_ticks(to)) {
            if b > a {
                flags |= C_PF;
            }
        }
        if self.reg(REG_B) & B_SET == 0 && self.seconds_turned(to) > self.seconds_turned(from) {
            flags |= C_UF;
            // The alarm is checked at the last second that turned (enough for a guest
            // that serves its interrupts; several missed seconds raise it at most once).
            let turned = self.seconds_turned(to) * NS_PER_S - self.state.wall_phase_ns;
            if self.alarm_matches(turned, ctx) {
                flags |= C_AF;
            }
        }
        let c = self.reg(REG_C);
        let enabled = self.reg(REG_B) & (B_PIE | B_AIE | B_UIE);
        // PIE/AIE/UIE are the bits of PF/AF/UF in status B.
        let irq = (c | flags) & enabled & (C_PF | C_AF | C_UF) != 0;
        let mut new_c = c | flags;
        if irq {
            if c & C_IRQF == 0 {
                ctx.raise_irq(RTC_IRQ);
            }
            new_c |= C_IRQF;
        }
        self.state.cmos[usize::from(REG_C)] = new_c;
    }

    fn interrupts_enabled(&self) -> bool {
        self.reg(REG_B) & (B_PIE | B_AIE | B_UIE) != 0
    }

    /// Raises IRQ8 if an enabled interrupt came due by `ctx.now_ns`.
    pub fn poll(&mut self, ctx: &mut DeviceCtx) {
        if self.interrupts_enabled() {
            self.update_flags(ctx);
        }
    }

    /// Guest time of the next enabled interrupt, if any.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let b = self.reg(REG_B);
        let from = self.state.flags_ns;
        let periodic = (b & B_PIE != 0)
            .then(|| periodic_period(self.reg(REG_A)))
            .flatten()
            .map(|(num, den)| {
                let next = u128::from(from) * den / num + 1;
                // The first whole nanosecond at or after tick `next`.
                (next * num).div_ceil(den) as u64
            });
        let second = (b & (B_UIE | B_AIE) != 0 && b & B_SET == 0)
            .then(|| (self.seconds_turned(from) + 1) * NS_PER_S - self.state.wall_phase_ns);
        [periodic, second].into_iter().flatten().min()
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
                // Interrupt flags, brought up to now; reading clears them (and IRQF).
                self.update_flags(ctx);
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
        // Flags up to now count under the old settings (for a guest that uses them).
        if matches!(reg, REG_A | REG_B)
            && (self.interrupts_enabled() || reg == REG_B && value & (B_PIE | B_AIE | B_UIE) != 0)
        {
            self.update_flags(ctx);
        }
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

    fn write(rtc: &mut Rtc, reg: u8, value: u8, ctx: &mut DeviceCtx) {
        rtc.write(0, reg, ctx);
        rtc.write(1, value, ctx);
    }

    fn irq_at(rtc: &mut Rtc, ns: u64) -> bool {
        let mut ctx = DeviceCtx::new(ns, WALL);
        rtc.poll(&mut ctx);
        ctx.raised_irqs & (1 << RTC_IRQ) != 0
    }

    #[test]
    fn periodic_interrupt_follows_the_rate_and_waits_for_status_c() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        // 64 Hz: rate select 10, period 2^9 / 32768 s = 15.625 ms.
        write(&mut rtc, REG_A, 0x2a, &mut ctx);
        assert_eq!(rtc.next_deadline_ns(), None, "PIE off: no deadline");
        write(&mut rtc, REG_B, B_24H | B_PIE, &mut ctx);
        assert_eq!(rtc.next_deadline_ns(), Some(15_625_000));
        assert!(!irq_at(&mut rtc, 15_624_999));
        assert!(irq_at(&mut rtc, 15_625_000));
        // IRQF stays set until C is read: no second edge.
        assert!(!irq_at(&mut rtc, 40_000_000));
        let mut ctx = DeviceCtx::new(40_000_000, WALL);
        assert_eq!(read(&mut rtc, REG_C, &mut ctx), C_IRQF | C_PF);
        assert_eq!(read(&mut rtc, REG_C, &mut ctx), 0, "reading C clears it");
        assert_eq!(rtc.next_deadline_ns(), Some(46_875_000));
        assert!(irq_at(&mut rtc, 46_875_000));
    }

    #[test]
    fn flags_show_without_interrupts_when_disabled() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        write(&mut rtc, REG_A, 0x26, &mut ctx); // 1024 Hz, PIE off
        assert!(!irq_at(&mut rtc, 5_000_000));
        let mut ctx = DeviceCtx::new(5_000_000, WALL);
        assert_eq!(read(&mut rtc, REG_C, &mut ctx), C_PF);
    }

    #[test]
    fn update_ended_interrupt_comes_when_the_wall_clock_second_turns() {
        // Boot 0.3 s into a wall-clock second: the first second turns at 0.7 s.
        let wall = WALL + 300_000_000;
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, wall);
        write(&mut rtc, REG_B, B_24H | B_UIE, &mut ctx);
        assert_eq!(rtc.next_deadline_ns(), Some(700_000_000));
        let mut ctx = DeviceCtx::new(699_999_999, wall);
        rtc.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 0);
        let mut ctx = DeviceCtx::new(700_000_000, wall);
        rtc.poll(&mut ctx);
        assert_eq!(ctx.raised_irqs, 1 << RTC_IRQ);
        // PF too: the default 1024 Hz rate sets it, interrupt enabled or not.
        assert_eq!(read(&mut rtc, REG_C, &mut ctx), C_IRQF | C_PF | C_UF);
        assert_eq!(rtc.next_deadline_ns(), Some(1_700_000_000));
    }

    #[test]
    fn alarm_interrupt_fires_at_the_matching_second() {
        let mut rtc = Rtc::new(64 << 20);
        let mut ctx = DeviceCtx::new(0, WALL);
        // WALL is 22:41:07; alarm at any hour, minute 41, second 10 (BCD).
        write(&mut rtc, REG_SECONDS_ALARM, 0x10, &mut ctx);
        write(&mut rtc, REG_MINUTES_ALARM, 0x41, &mut ctx);
        write(&mut rtc, REG_HOURS_ALARM, 0xc0, &mut ctx);
        write(&mut rtc, REG_B, B_24H | B_AIE, &mut ctx);
        for s in 1..3 {
            assert!(!irq_at(&mut rtc, s * NS_PER_S), "second {s}");
        }
        assert!(irq_at(&mut rtc, 3 * NS_PER_S));
        let mut ctx = DeviceCtx::new(3 * NS_PER_S, WALL);
        assert_eq!(read(&mut rtc, REG_C, &mut ctx), C_IRQF | C_PF | C_AF | C_UF);
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
