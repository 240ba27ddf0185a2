//! A cascaded pair of Intel 8259A programmable interrupt controllers (master at 0x20,
//! slave at 0xA0 on the master's IRQ2), edge-triggered, as on the PC.
//!
//! Modelled: ICW1-ICW4 initialisation, vector base, auto-EOI, masks (OCW1), non-specific,
//! specific and rotating EOI (OCW2), reading IRR/ISR and poll mode (OCW3), special mask
//! mode, the spurious IRQ7/IRQ15 on an acknowledge with nothing pending. Not modelled:
//! level-triggered mode (ELCR), buffered mode, 8080 call addresses (all irrelevant to PC
//! guests).

use serde::{Deserialize, Serialize};

use super::{DeviceCtx, PioDevice};

/// The state of one 8259A.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    /// Priority rotation: IRQ number with the highest priority.
    pub priority_add: u8,
    pub vector_base: u8,
    /// 0: not initialising; 2, 3, 4: the ICW expected next.
    pub init_step: u8,
    pub expect_icw4: bool,
    pub single_mode: bool,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub special_mask: bool,
    /// OCW3: read ISR instead of IRR on the command port.
    pub read_isr: bool,
    /// OCW3 poll command pending for the next read.
    pub poll: bool,
}

impl PicState {
    /// Priority-ordered index (0 = highest) of the highest-priority bit of `mask`, as an IRQ.
    fn highest_priority(&self, mask: u8) -> Option<u8> {
        (0..8)
            .map(|i| (i + self.priority_add) & 7)
            .find(|irq| mask & (1 << irq) != 0)
    }

    /// The IRQ this chip would signal to the CPU now, if any.
    fn pending_irq(&self) -> Option<u8> {
        let irq = self.highest_priority(self.irr & !self.imr)?;
        let in_service = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        match self.highest_priority(in_service) {
            // An IRQ in service blocks equal and lower priorities.
            Some(busy) if self.rank(busy) <= self.rank(irq) => None,
            _ => Some(irq),
        }
    }

    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.priority_add) & 7
    }

    /// CPU acknowledge of `irq`: IRR -> ISR (or auto-EOI).
    fn acknowledge(&mut self, irq: u8) {
        self.irr &= !(1 << irq);
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= 1 << irq;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: start initialisation. Clears masks and state, edge-triggered.
            *self = PicState {
                vector_base: self.vector_base,
                init_step: 2,
                expect_icw4: value & 0x01 != 0,
                single_mode: value & 0x02 != 0,
                ..PicState::default()
            };
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Rotate in auto-EOI mode, clear / set.
            0b000 => self.rotate_on_auto_eoi = false,
            0b100 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI, optionally rotating.
            0b001 | 0b101 => {
                if let Some(irq) = self.highest_priority(self.isr) {
                    self.isr &= !(1 << irq);
                    if value & 0x80 != 0 {
                        self.priority_add = (irq + 1) & 7;
                    }
                }
            }
            // Specific EOI, optionally rotating.
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if value & 0x80 != 0 {
                    self.priority_add = (level + 1) & 7;
                }
            }
            // Set priority.
            0b110 => self.priority_add = (level + 1) & 7,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if self.single_mode {
                    if self.expect_icw4 {
                        4
                    } else {
                        0
                    }
                } else {
                    3
                };
            }
            3 => self.init_step = if self.expect_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    /// A poll read: acknowledges the highest pending IRQ (bit 7 = an IRQ was pending).
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending_irq() {
            Some(irq) => {
                self.acknowledge(irq);
                0x80 | irq
            }
            None => 0,
        }
    }
}

/// Which chip of the pair a port range belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chip {
    Master,
    Slave,
}

/// The cascaded pair; ISA IRQ n < 8 is on the master, n >= 8 on the slave (via IRQ2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicPairState {
    pub master: PicState,
    pub slave: PicState,
}

const CASCADE_IRQ: u8 = 2;

#[derive(Debug, Default, Clone)]
pub struct PicPair {
    state: PicPairState,
}

impl PicPair {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_state(state: PicPairState) -> Self {
        PicPair { state }
    }

    pub fn state(&self) -> &PicPairState {
        &self.state
    }

    /// A rising edge on ISA IRQ line `irq` (0-15).
    pub fn raise(&mut self, irq: u8) {
        if irq < 8 {
            self.state.master.irr |= 1 << irq;
        } else if irq < 16 {
            self.state.slave.irr |= 1 << (irq - 8);
        }
        self.update_cascade();
    }

    /// Raises every line whose bit is set in `lines`.
    pub fn raise_lines(&mut self, lines: u16) {
        for irq in 0..16u8 {
            if lines & (1 << irq) != 0 {
                self.raise(irq);
            }
        }
    }

    /// Whether the pair's INTR output is asserted (an interrupt is waiting for the CPU).
    pub fn has_pending(&self) -> bool {
        self.state.master.pending_irq().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: returns the vector to inject. With nothing
    /// pending the chip answers a spurious IRQ7 (or IRQ15 on the slave), as real ones do.
    pub fn acknowledge(&mut self) -> u8 {
        let master = &mut self.state.master;
        let Some(irq) = master.pending_irq() else {
            return master.vector_base | 7;
        };
        master.acknowledge(irq);
        if irq != CASCADE_IRQ || master.single_mode {
            return master.vector_base | irq;
        }
        let slave = &mut self.state.slave;
        let vector = match slave.pending_irq() {
            Some(slave_irq) => {
                slave.acknowledge(slave_irq);
                slave.vector_base | slave_irq
            }
            None => slave.vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    /// The slave's output drives the master's IRQ2 input.
    fn update_cascade(&mut self) {
        if self.state.slave.pending_irq().is_some() {
            self.state.master.irr |= 1 << CASCADE_IRQ;
        } else {
            self.state.master.irr &= !(1 << CASCADE_IRQ);
        }
    }

    fn chip(&mut self, chip: Chip) -> &mut PicState {
        match chip {
            Chip::Master => &mut self.state.master,
            Chip::Slave => &mut self.state.slave,
        }
    }

    pub fn read(&mut self, chip: Chip, offset: u16) -> u8 {
        let pic = self.chip(chip);
        let value = if pic.poll {
            pic.poll_read()
        } else if offset == 0 {
            if pic.read_isr {
                pic.isr
            } else {
                pic.irr
            }
        } else {
            pic.imr
        };
        self.update_cascade();
        value
    }

    pub fn write(&mut self, chip: Chip, offset: u16, value: u8) {
        let pic = self.chip(chip);
        if offset == 0 {
            pic.write_command(value);
        } else {
            pic.write_data(value);
        }
        self.update_cascade();
    }
}

/// One chip of the pair as seen from its port range.
pub struct PicPort<'a> {
    pub pair: &'a mut PicPair,
    pub chip: Chip,
}

impl PioDevice for PicPort<'_> {
    fn read(&mut self, offset: u16, _ctx: &mut DeviceCtx) -> u8 {
        self.pair.read(self.chip, offset)
    }
    fn write(&mut self, offset: u16, value: u8, _ctx: &mut DeviceCtx) {
        self.pair.write(self.chip, offset, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initialisation sequence every PC OS uses: bases 0x20/0x28, cascade on IRQ2.
    fn initialised() -> PicPair {
        let mut p = PicPair::new();
        for (chip, base, icw3) in [(Chip::Master, 0x20, 0x04), (Chip::Slave, 0x28, 0x02)] {
            p.write(chip, 0, 0x11);
            p.write(chip, 1, base);
            p.write(chip, 1, icw3);
            p.write(chip, 1, 0x01);
            p.write(chip, 1, 0x00);
        }
        p
    }

    #[test]
    fn master_irq_is_delivered_and_blocks_until_eoi() {
        let mut p = initialised();
        assert!(!p.has_pending());
        p.raise(0);
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), 0x20);
        assert!(!p.has_pending());
        p.raise(0);
        assert!(!p.has_pending(), "IRQ0 in service blocks another IRQ0");
        p.raise(4);
        assert!(
            !p.has_pending(),
            "lower priority blocked by IRQ0 in service"
        );
        p.write(Chip::Master, 0, 0x20); // non-specific EOI
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), 0x20);
        p.write(Chip::Master, 0, 0x60); // specific EOI IRQ0
        assert_eq!(p.acknowledge(), 0x24);
    }

    #[test]
    fn masked_irq_waits_in_irr() {
        let mut p = initialised();
        p.write(Chip::Master, 1, 0x01);
        p.raise(0);
        assert!(!p.has_pending());
        assert_eq!(p.read(Chip::Master, 0), 0x01, "IRR readable by default");
        p.write(Chip::Master, 1, 0x00);
        assert_eq!(p.acknowledge(), 0x20);
        p.write(Chip::Master, 0, 0x0b); // OCW3: read ISR
        assert_eq!(p.read(Chip::Master, 0), 0x01);
        assert_eq!(p.read(Chip::Master, 1), 0x00);
    }

    #[test]
    fn slave_irq_goes_through_cascade() {
        let mut p = initialised();
        p.raise(8);
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), 0x28);
        assert_eq!(p.state().master.isr, 1 << 2);
        assert_eq!(p.state().slave.isr, 1);
        p.write(Chip::Slave, 0, 0x20);
        p.write(Chip::Master, 0, 0x20);
        assert_eq!(p.state().master.isr, 0);
        assert!(!p.has_pending());
    }

    #[test]
    fn spurious_acknowledge_answers_irq7() {
        let mut p = initialised();
        assert_eq!(p.acknowledge(), 0x27);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = PicPair::new();
        p.write(Chip::Master, 0, 0x13); // single, ICW4
        p.write(Chip::Master, 1, 0x40);
        p.write(Chip::Master, 1, 0x03); // AEOI
        p.write(Chip::Master, 1, 0x00);
        p.raise(1);
        assert_eq!(p.acknowledge(), 0x41);
        assert_eq!(p.state().master.isr, 0);
    }

    #[test]
    fn poll_mode_reports_and_acknowledges() {
        let mut p = initialised();
        p.raise(3);
        p.write(Chip::Master, 0, 0x0c); // OCW3 poll
        assert_eq!(p.read(Chip::Master, 0), 0x83);
        assert_eq!(p.state().master.isr, 1 << 3);
    }
}
