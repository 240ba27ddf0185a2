/*
 * entropy: reads each nondeterministic input the VMM must record once and
 * prints it (values differ from run to run; the format does not):
 *
 *     entropy: reading nondeterministic inputs
 *     tsc: 0x<hex>
 *     rdrand: 0x<hex>         (or "rdrand: unsupported" / "rdrand: failed")
 *     rtc: YYYY-MM-DD HH:MM:SS
 *     pit: <decimal counter value, 0-65535>
 *
 * Exit status 0.
 */
#include "rt.h"

#define RTC_SECONDS 0x00
#define RTC_MINUTES 0x02
#define RTC_HOURS 0x04
#define RTC_DAY 0x07
#define RTC_MONTH 0x08
#define RTC_YEAR 0x09
#define RTC_STATUS_A 0x0a   /* bit 7: update in progress */
#define RTC_STATUS_B 0x0b   /* bit 2: binary (else BCD), bit 1: 24-hour */

struct rtc_time {
	uint8_t sec, min, hour, day, mon, year;
};

static void rtc_read_raw(struct rtc_time *t)
{
	/* Wait (boundedly) for the end of an update cycle. */
	for (int i = 0; i < 1000 && (cmos_read(RTC_STATUS_A) & 0x80); i++)
		;
	t->sec = cmos_read(RTC_SECONDS);
	t->min = cmos_read(RTC_MINUTES);
	t->hour = cmos_read(RTC_HOURS);
	t->day = cmos_read(RTC_DAY);
	t->mon = cmos_read(RTC_MONTH);
	t->year = cmos_read(RTC_YEAR);
}

static uint8_t bcd(uint8_t v)
{
	return (uint8_t)((v >> 4) * 10 + (v & 0x0f));
}

static void rtc_read(struct rtc_time *t)
{
	/* Read until two reads agree, so we never mix two different seconds. */
	struct rtc_time again;
	rtc_read_raw(t);
	for (int i = 0; i < 5; i++) {
		rtc_read_raw(&again);
		if (again.sec == t->sec && again.min == t->min && again.hour == t->hour &&
		    again.day == t->day && again.mon == t->mon && again.year == t->year)
			break;
		*t = again;
	}
	uint8_t b = cmos_read(RTC_STATUS_B);
	bool pm = t->hour & 0x80;
	t->hour &= 0x7f;
	if (!(b & 0x04)) {
		t->sec = bcd(t->sec);
		t->min = bcd(t->min);
		t->hour = bcd(t->hour);
		t->day = bcd(t->day);
		t->mon = bcd(t->mon);
		t->year = bcd(t->year);
	}
	if (!(b & 0x02)) {             /* 12-hour clock: 12 AM = 0, 12 PM = 12 */
		t->hour %= 12;
		if (pm)
			t->hour += 12;
	}
}

static uint16_t pit_read_ch0(void)
{
	outb(0x43, 0x00);              /* counter latch command, channel 0 */
	uint8_t lo = inb(0x40);
	uint8_t hi = inb(0x40);
	return (uint16_t)(lo | (hi << 8));
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	serial_puts("entropy: reading nondeterministic inputs\n");

	printk("tsc: 0x%lx\n", rdtsc());

	uint64_t r;
	if (!rdrand_supported())
		serial_puts("rdrand: unsupported\n");
	else if (rdrand64(&r))
		printk("rdrand: 0x%lx\n", r);
	else
		serial_puts("rdrand: failed\n");

	struct rtc_time t;
	rtc_read(&t);
	printk("rtc: %u-%02u-%02u %02u:%02u:%02u\n", 2000 + t.year, t.mon, t.day, t.hour, t.min,
	       t.sec);

	/* Free-running channel 0 (IRQ0 stays masked), divisor 65536. */
	pit_start(0, 2);
	for (volatile int i = 0; i < 20; i++)
		;                      /* let the counter move a little */
	printk("pit: %u\n", pit_read_ch0());
	return 0;
}
