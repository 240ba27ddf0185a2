/*
 * rtc: the CMOS RTC's interrupts (IRQ8, through the slave PIC). First the periodic
 * interrupt at 64 Hz (status A rate select 10) for 8 ticks, then one update-ended
 * interrupt (the clock's seconds turning). The handler reads status C, which tells the
 * cause and acknowledges the interrupt. Output (identical on every run):
 *
 *     rtc: periodic interrupt at 64 Hz, waiting for 8 ticks
 *     rtc: 8 periodic ticks, then an update-ended interrupt
 *
 * Exit status 0, or 1 if the flags in status C did not match what was enabled.
 */
#include "rt.h"

#define RTC_A 0x0a
#define RTC_B 0x0b
#define RTC_C 0x0c
#define B_PIE 0x40
#define B_UIE 0x10
#define C_IRQF 0x80
#define C_PF 0x40
#define C_UF 0x10
#define TARGET_TICKS 8

static volatile uint32_t periodic;
static volatile uint32_t updates;
static volatile uint32_t bad;

static void cmos_write(uint8_t reg, uint8_t value)
{
	outb(0x70, reg);
	outb(0x71, value);
}

static void rtc_irq(unsigned irq)
{
	(void)irq;
	uint8_t c = cmos_read(RTC_C);
	uint8_t b = cmos_read(RTC_B);
	if (!(c & C_IRQF))
		bad++;
	if ((c & C_PF) && (b & B_PIE)) {
		if (++periodic == TARGET_TICKS)
			cmos_write(RTC_B, (uint8_t)(b & ~B_PIE));
	}
	if ((c & C_UF) && (b & B_UIE)) {
		updates++;
		cmos_write(RTC_B, (uint8_t)(b & ~B_UIE));
	}
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	printk("rtc: periodic interrupt at 64 Hz, waiting for %u ticks\n", TARGET_TICKS);
	irq_register(8, rtc_irq);
	(void)cmos_read(RTC_C);
	cmos_write(RTC_A, (uint8_t)((cmos_read(RTC_A) & 0xf0) | 10));
	cmos_write(RTC_B, (uint8_t)(cmos_read(RTC_B) | B_PIE));
	pic_unmask(8);

	irq_disable();
	while (periodic < TARGET_TICKS)
		cpu_halt_wait();
	cmos_write(RTC_B, (uint8_t)(cmos_read(RTC_B) | B_UIE));
	while (updates == 0)
		cpu_halt_wait();
	irq_enable();

	if (bad || periodic != TARGET_TICKS || updates != 1) {
		printk("rtc: INCONSISTENT: periodic %u, updates %u, bad %u\n", periodic, updates,
		       bad);
		return 1;
	}
	printk("rtc: %u periodic ticks, then an update-ended interrupt\n", periodic);
	return 0;
}
