/*
 * timer: PIT channel 0 at ~1000 Hz, IRQ0 handler vs. main loop.
 *
 * The handler counts ticks and folds each tick number into a running
 * checksum; it stops itself (masks IRQ0) after TARGET_TICKS.  The main loop
 * sleeps with hlt, checks on every wake-up that the tick count never goes
 * backwards, and at the end recomputes the checksum the handler should
 * have produced.  Output (identical on every run):
 *
 *     timer: PIT at 1000 Hz, waiting for 10 ticks
 *     timer: 10 ticks, handler state consistent
 *
 * Exit status: the number of ticks observed (10) when consistent, else 1.
 */
#include "rt.h"

#define TIMER_HZ 1000
#define TARGET_TICKS 10

/* Shared between the IRQ0 handler and main; volatile so every access is a
 * real memory access where the source says. */
static volatile uint32_t ticks;
static volatile uint32_t checksum;

static uint32_t mix(uint32_t sum, uint32_t tick)
{
	return sum * 31 + tick;
}

static void timer_irq(unsigned irq)
{
	(void)irq;
	if (ticks >= TARGET_TICKS)
		return;
	uint32_t t = ticks + 1;
	checksum = mix(checksum, t);
	ticks = t;
	if (t == TARGET_TICKS)
		pic_mask(0);     /* done: no more ticks, the count stays exact */
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	printk("timer: PIT at %u Hz, waiting for %u ticks\n", TIMER_HZ, TARGET_TICKS);

	irq_register(0, timer_irq);
	pit_start((uint16_t)((PIT_HZ + TIMER_HZ / 2) / TIMER_HZ), 2);
	pic_unmask(0);

	bool monotonic = true;
	uint32_t last = 0;
	irq_disable();
	while (ticks < TARGET_TICKS) {
		cpu_halt_wait();
		uint32_t now = ticks;    /* interrupts off: a stable view */
		if (now < last)
			monotonic = false;
		last = now;
	}
	irq_enable();

	uint32_t seen = ticks;
	uint32_t expect = 0;
	for (uint32_t t = 1; t <= seen; t++)
		expect = mix(expect, t);
	if (!monotonic || seen != TARGET_TICKS || checksum != expect) {
		printk("timer: INCONSISTENT: ticks %u, checksum 0x%x, expected 0x%x, monotonic %u\n",
		       seen, checksum, expect, monotonic);
		return 1;
	}
	printk("timer: %u ticks, handler state consistent\n", seen);
	return (int)seen;
}
