//! Chaos recording (`ttvm record --chaos [--seed S]`): the recorder perturbs the choices it
//! is free to make, from one seeded generator, so that timing bugs show up in recordings.
//!
//! Every perturbation is a choice the recorder makes and logs; nothing here needs the
//! replayer's cooperation, and the replayer never re-runs the generator:
//! - **Instruction rate** (timer rate and phase): guest nanoseconds per step are drawn per
//!   run, log-uniformly between half and 32 times the base rate (`--time-rate`, 50 to
//!   3200 ns per instruction by default: from a fast host with slack to an emulated or
//!   overloaded vCPU, like the ~610 ns per ring-0 instruction of a nested software KVM).
//!   This moves every timer tick to other instructions of the guest. Stored in the header
//!   (`ns_per_step`), as every recording's rate is.
//! - **Clock phases**: the TSC value at boot (a VM's TSC starts anywhere) and the
//!   sub-second phase of the boot wall clock (where the RTC's second boundary and its
//!   update-in-progress window fall). Stored in the header (`tsc_base`,
//!   `boot_wall_clock_ns`); the whole seconds of the wall clock stay the host's.
//! - **Interrupt delivery delay**: when an interrupt becomes deliverable while the guest
//!   runs, half the time it is held back for 1 to [`MAX_IRQ_DELAY_STEPS`] instructions, as
//!   long microcoded instructions, SMIs and a busy bus delay interrupts on real hardware.
//!   Never while the guest is halted in HLT (a halted CPU takes a pending interrupt at
//!   once; the replayer treats anything else as a divergence). Interrupt events are logged
//!   at the position where they were delivered, so replay needs nothing more.
//! - **Serial input arrival**: available input bytes are handed to the UART in pieces of
//!   random size, with gaps of up to [`MAX_SERIAL_GAP_STEPS`] instructions between pieces
//!   (at 115200 baud one byte takes ~870 instructions at 100 ns each). A guest halted
//!   waiting for input gets it at once. Bytes are logged where they were delivered.
//!
//! A seed fixes every one of these choices: re-recording with the same seed gives the same
//! run unless the guest depends on something else from the host (RDRAND/RDSEED values, the
//! wall clock's whole seconds, the timing of serial input). The generator is SplitMix64,
//! written out here so that a seed means the same run on every machine and ttvm version
//! that keeps this file's rules.

use ttvm_logs::{ChaosParams, ClockInfo, ClockParams};
use ttvm_vmm::machine::digest::RegSnapshot;
use ttvm_vmm::run::singlestep::{BootFacts, HostValueKind, Position, StepDriver, Stop, TimeConfig};
use ttvm_vmm::{Machine, RunEnd, SerialPoll};

/// Longest delay of one interrupt's delivery, in instructions (steps).
pub const MAX_IRQ_DELAY_STEPS: u64 = 512;
/// Share of deliverable interrupts that are delayed at all, in percent.
pub const IRQ_DELAY_PERCENT: u64 = 50;
/// Longest gap between two pieces of serial input, in instructions (steps).
pub const MAX_SERIAL_GAP_STEPS: u64 = 2000;
/// The rate range: `base / RATE_DIVISOR ..= base * RATE_FACTOR` ns per step.
pub const RATE_DIVISOR: u64 = 2;
pub const RATE_FACTOR: u64 = 32;

const NS_PER_S: u64 = 1_000_000_000;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and every 64-bit seed is a good one.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0); Lemire's multiply-shift, bias below 2^-32 here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Independent generator streams, so that one kind of decision does not shift another.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Plan = 1,
    Interrupts = 2,
    Serial = 3,
}

fn stream(seed: u64, which: Stream) -> SplitMix64 {
    // Mix the stream number in through one round of the generator itself.
    let mut mixer = SplitMix64::new(seed ^ (which as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    SplitMix64::new(mixer.next_u64())
}

/// 2^(i/8) for i in 0..8, in thousandths: rates are spaced evenly on a log scale using
/// integers only (no floating point: the same seed gives the same rate everywhere).
const EIGHTH_OCTAVES: [u64; 8] = [1000, 1091, 1189, 1297, 1414, 1542, 1682, 1834];

/// The per-run choices made at boot from a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosPlan {
    pub seed: u64,
    /// Guest nanoseconds per step for this run.
    pub ns_per_step: u64,
    /// The TSC value at boot.
    pub tsc_base: u64,
    /// Nanoseconds past the whole second of the boot wall clock.
    pub wall_clock_phase_ns: u64,
}

impl ChaosPlan {
    /// Draws the plan of `seed` around the base rate of `base`.
    pub fn new(seed: u64, base: TimeConfig) -> Self {
        let mut rng = stream(seed, Stream::Plan);
        let low = (base.ns_per_step / RATE_DIVISOR).max(1);
        // 64 = RATE_DIVISOR * RATE_FACTOR: six octaves in eighths, both ends included.
        let octaves = (RATE_DIVISOR * RATE_FACTOR).ilog2() as u64;
        let k = rng.below(octaves * 8 + 1);
        let ns_per_step = (low << (k / 8)) * EIGHTH_OCTAVES[(k % 8) as usize] / 1000;
        ChaosPlan {
            seed,
            ns_per_step: ns_per_step.max(1),
            // Below 2^48: centuries before the guest could see it wrap.
            tsc_base: rng.next_u64() >> 16,
            wall_clock_phase_ns: rng.below(NS_PER_S),
        }
    }

    pub fn time(&self) -> TimeConfig {
        TimeConfig {
            ns_per_step: self.ns_per_step,
        }
    }

    /// The host's boot facts with this plan's TSC base and wall-clock phase.
    pub fn boot_facts(&self, host: BootFacts) -> BootFacts {
        BootFacts {
            wall_clock_ns: host.wall_clock_ns / NS_PER_S * NS_PER_S + self.wall_clock_phase_ns,
            tsc_base: self.tsc_base,
        }
    }

    /// One line for people: what this run was given.
    pub fn describe(&self) -> String {
        format!(
            "chaos seed {}: {} ns per instruction, interrupts delayed up to {MAX_IRQ_DELAY_STEPS} \
             instructions, serial input in pieces up to {MAX_SERIAL_GAP_STEPS} instructions apart",
            self.seed, self.ns_per_step
        )
    }

    /// Adds the seed and the description to the header's clock parameters.
    pub fn annotate(&self, clock: &mut ClockInfo) {
        if let ClockParams::Singlestep(params) = &mut clock.params {
            params.chaos = Some(ChaosParams {
                seed: self.seed,
                perturbed: self.describe(),
            });
        }
    }
}

/// What chaos did during a run (stored with the trace's counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChaosStats {
    /// Interrupts whose delivery was held back.
    pub irq_delayed: u64,
    /// Instructions they were held back, in total.
    pub irq_delay_steps: u64,
    /// Serial input pieces handed to the guest.
    pub serial_pieces: u64,
}

impl ChaosStats {
    pub fn counters(&self) -> [(&'static str, u64); 3] {
        [
            ("chaos_irq_delayed", self.irq_delayed),
            ("chaos_irq_delay_steps", self.irq_delay_steps),
            ("chaos_serial_pieces", self.serial_pieces),
        ]
    }
}

/// Wraps the recording driver: answers "not yet" to some interrupt deliveries and paces
/// serial input; everything else goes to the wrapped driver, which logs what was decided.
pub struct ChaosDriver<D> {
    inner: D,
    irq_rng: SplitMix64,
    serial_rng: SplitMix64,
    /// The position from which the pending interrupt may be delivered, once decided.
    irq_due: Option<(Position, Position)>,
    /// No serial input is taken before this position (unless the guest idles).
    serial_gate: Position,
    stats: ChaosStats,
}

impl<D: StepDriver> ChaosDriver<D> {
    pub fn new(inner: D, plan: &ChaosPlan) -> Self {
        ChaosDriver {
            inner,
            irq_rng: stream(plan.seed, Stream::Interrupts),
            serial_rng: stream(plan.seed, Stream::Serial),
            irq_due: None,
            serial_gate: 0,
            stats: ChaosStats::default(),
        }
    }

    pub fn stats(&self) -> ChaosStats {
        self.stats
    }

    /// The driver this one perturbs.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    fn draw_irq_delay(&mut self) -> u64 {
        if self.irq_rng.chance(IRQ_DELAY_PERCENT) {
            1 + self.irq_rng.below(MAX_IRQ_DELAY_STEPS)
        } else {
            0
        }
    }
}

impl<D: StepDriver> StepDriver for ChaosDriver<D> {
    type Error = D::Error;

    fn boot(&mut self) -> Result<BootFacts, D::Error> {
        self.inner.boot()
    }

    fn boundary(&mut self, pos: Position, m: &Machine) -> Result<Option<Stop>, D::Error> {
        self.inner.boundary(pos, m)
    }

    fn serial(&mut self, pos: Position, room: usize) -> Result<SerialPoll, D::Error> {
        if pos < self.serial_gate || room == 0 {
            return Ok(SerialPoll::Nothing);
        }
        let piece = 1 + self.serial_rng.below(room as u64) as usize;
        let poll = self.inner.serial(pos, piece)?;
        if matches!(poll, SerialPoll::Bytes(_)) {
            self.stats.serial_pieces += 1;
            self.serial_gate = pos + self.serial_rng.below(MAX_SERIAL_GAP_STEPS + 1);
        }
        Ok(poll)
    }

    fn inject_now(
        &mut self,
        pos: Position,
        pending: bool,
        ready: bool,
        halted: bool,
    ) -> Result<bool, D::Error> {
        let live = self.inner.inject_now(pos, pending, ready, halted)?;
        if !pending {
            self.irq_due = None;
        }
        if !live {
            return Ok(false);
        }
        if halted {
            // A halted CPU takes a pending interrupt at once (and replay insists).
            return Ok(true);
        }
        let (since, due) = match self.irq_due {
            Some(decided) => decided,
            None => {
                let decided = (pos, pos + self.draw_irq_delay());
                self.irq_due = Some(decided);
                decided
            }
        };
        if pos < due {
            return Ok(false);
        }
        if due > since {
            self.stats.irq_delayed += 1;
            self.stats.irq_delay_steps += pos - since;
        }
        Ok(true)
    }

    fn injected(&mut self, pos: Position, vector: u8) -> Result<(), D::Error> {
        self.irq_due = None;
        self.inner.injected(pos, vector)
    }

    fn host_value(
        &mut self,
        pos: Position,
        kind: HostValueKind,
        virtual_value: u64,
    ) -> Result<(u64, bool), D::Error> {
        self.inner.host_value(pos, kind, virtual_value)
    }

    fn snapshot(&mut self, pos: Position, regs: &RegSnapshot) -> Result<(), D::Error> {
        self.inner.snapshot(pos, regs)
    }

    fn wait_for_input(&mut self, pos: Position) -> Result<(), D::Error> {
        if self.serial_gate > pos {
            // Held-back input goes to an idle guest at once: look again at this position.
            self.serial_gate = pos;
            return Ok(());
        }
        self.inner.wait_for_input(pos)
    }

    fn idle(
        &mut self,
        pos: Position,
        deadline_ns: u64,
        can_receive: bool,
    ) -> Result<bool, D::Error> {
        if can_receive && self.serial_gate > pos {
            self.serial_gate = pos;
            return Ok(true);
        }
        self.inner.idle(pos, deadline_ns, can_receive)
    }

    fn end(
        &mut self,
        pos: Position,
        end: &RunEnd,
        regs: &RegSnapshot,
        digest: u64,
    ) -> Result<(), D::Error> {
        self.inner.end(pos, end, regs, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // Reference outputs of SplitMix64 seeded with 1234567.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn plans_are_deterministic_and_in_range() {
        let base = TimeConfig::default();
        for seed in 0..2000 {
            let p = ChaosPlan::new(seed, base);
            assert_eq!(p, ChaosPlan::new(seed, base));
            assert!((50..=3200).contains(&p.ns_per_step), "{p:?}");
            assert!(p.tsc_base < 1 << 48 && p.wall_clock_phase_ns < NS_PER_S);
        }
        let rates: std::collections::BTreeSet<u64> = (0..2000)
            .map(|s| ChaosPlan::new(s, base).ns_per_step)
            .collect();
        assert_eq!(rates.len(), 49, "every eighth octave is drawn: {rates:?}");
        assert_eq!(rates.first(), Some(&50));
        assert_eq!(rates.last(), Some(&3200));
    }

    /// The live host's answers, with serial input available from the start.
    #[derive(Default)]
    struct Host {
        input: Vec<u8>,
        idled: u32,
    }

    impl StepDriver for Host {
        type Error = std::convert::Infallible;
        fn boot(&mut self) -> Result<BootFacts, Self::Error> {
            unreachable!()
        }
        fn boundary(&mut self, _: Position, _: &Machine) -> Result<Option<Stop>, Self::Error> {
            Ok(None)
        }
        fn serial(&mut self, _: Position, room: usize) -> Result<SerialPoll, Self::Error> {
            if self.input.is_empty() {
                return Ok(SerialPoll::Nothing);
            }
            let n = room.min(self.input.len());
            Ok(SerialPoll::Bytes(self.input.drain(..n).collect()))
        }
        fn inject_now(
            &mut self,
            _: Position,
            p: bool,
            r: bool,
            _: bool,
        ) -> Result<bool, Self::Error> {
            Ok(p && r)
        }
        fn injected(&mut self, _: Position, _: u8) -> Result<(), Self::Error> {
            Ok(())
        }
        fn host_value(
            &mut self,
            _: Position,
            _: HostValueKind,
            v: u64,
        ) -> Result<(u64, bool), Self::Error> {
            Ok((v, true))
        }
        fn snapshot(&mut self, _: Position, _: &RegSnapshot) -> Result<(), Self::Error> {
            Ok(())
        }
        fn wait_for_input(&mut self, _: Position) -> Result<(), Self::Error> {
            Ok(())
        }
        fn idle(&mut self, _: Position, _: u64, _: bool) -> Result<bool, Self::Error> {
            self.idled += 1;
            Ok(false)
        }
        fn end(
            &mut self,
            _: Position,
            _: &RunEnd,
            _: &RegSnapshot,
            _: u64,
        ) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn chaos(seed: u64) -> ChaosDriver<Host> {
        ChaosDriver::new(
            Host::default(),
            &ChaosPlan::new(seed, TimeConfig::default()),
        )
    }

    #[test]
    fn interrupts_are_delayed_within_the_bound_and_never_while_halted() {
        let mut delays = Vec::new();
        for seed in 0..200 {
            let mut d = chaos(seed);
            let Ok(at_once) = d.inject_now(1000, true, true, true);
            assert!(at_once, "a halted guest takes a pending interrupt at once");
            let Ok(()) = d.injected(1000, 0x20);
            let mut pos = 2000;
            while !matches!(d.inject_now(pos, true, true, false), Ok(true)) {
                pos += 1;
            }
            delays.push(pos - 2000);
            // Halting while delayed: delivered at once.
            let Ok(()) = d.injected(pos, 0x20);
            let Ok(first) = d.inject_now(5000, true, true, false);
            let Ok(halted) = d.inject_now(5001, true, true, true);
            assert!(first || halted);
        }
        assert!(delays.iter().all(|&d| d <= MAX_IRQ_DELAY_STEPS));
        let delayed = delays.iter().filter(|&&d| d > 0).count();
        assert!((60..140).contains(&delayed), "{delayed} of 200 delayed");
        assert!(delays.iter().any(|&d| d > MAX_IRQ_DELAY_STEPS / 2));
    }

    #[test]
    fn serial_input_comes_in_pieces_and_an_idle_guest_gets_it_at_once() {
        let mut d = chaos(3);
        d.inner.input = b"hello, world".to_vec();
        let mut got = Vec::new();
        let mut pos = 0;
        while got.len() < 12 && pos < 100_000 {
            if let Ok(SerialPoll::Bytes(b)) = d.serial(pos, 4) {
                assert!(!b.is_empty() && b.len() <= 4);
                got.extend(b);
            }
            pos += 1;
        }
        assert_eq!(got, b"hello, world");
        assert!(d.stats().serial_pieces >= 3, "{:?}", d.stats());
        assert!(pos > 3, "pieces are spread out");

        // Input held back while the guest halts: the gate opens, nobody waits on the host.
        let mut d = chaos(3);
        d.inner.input = b"abc".to_vec();
        d.serial_gate = 500;
        assert_eq!(d.serial(10, 16), Ok(SerialPoll::Nothing));
        assert_eq!(
            d.idle(10, 1_000_000, false),
            Ok(false),
            "cannot receive: time moves"
        );
        assert_eq!(d.inner.idled, 1);
        assert_eq!(d.idle(10, 1_000_000, true), Ok(true), "look again at once");
        assert_eq!(d.inner.idled, 1);
        assert!(matches!(d.serial(10, 16), Ok(SerialPoll::Bytes(_))));
        d.serial_gate = 500;
        assert_eq!(d.wait_for_input(20), Ok(()));
        assert_eq!(d.serial_gate, 20);
    }

    #[test]
    fn boot_facts_keep_the_whole_seconds() {
        let p = ChaosPlan::new(7, TimeConfig::default());
        let host = BootFacts {
            wall_clock_ns: 1_700_000_000_123_456_789,
            tsc_base: 99,
        };
        let f = p.boot_facts(host);
        assert_eq!(f.wall_clock_ns / NS_PER_S, 1_700_000_000);
        assert_eq!(f.tsc_base, p.tsc_base);
    }
}
