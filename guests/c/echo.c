/*
 * echo: reads bytes from COM1, upper-cases ASCII letters and echoes them.
 *
 * The first line is read by polling LSR bit 0 (RX interrupt off); the rest
 * by interrupt (IER "received data available", IRQ4): the handler moves
 * bytes into a ring buffer and the main loop sleeps with hlt.  A slow PIT
 * tick (100 Hz) keeps waking the main loop while idle, so it notices the
 * end of input even when no byte arrives.
 *
 * End of input: an EOT byte (0x04, not echoed, not counted), or the VMM
 * dropping the carrier (MSR bit 7, DCD) once its input hit EOF and every
 * byte was delivered.  The check reads MSR first, then LSR, with interrupts
 * off and the ring empty, so a byte delivered just before DCD dropped is
 * never lost.
 *
 * Output for input "hello\nworld\n" (+ EOT or carrier loss):
 *
 *     echo: ready
 *     HELLO
 *     WORLD
 *     echo: 12 bytes
 *
 * (if the input does not end in '\n', one is printed before the count).
 * Exit status 0.
 */
#include "rt.h"

#define COM1 0x3f8
#define UART_IER (COM1 + 1)
#define UART_LSR (COM1 + 5)
#define UART_MSR (COM1 + 6)
#define LSR_DR 0x01
#define MSR_DCD 0x80
#define IER_RX 0x01
#define EOT 0x04
#define IDLE_HZ 100

/* Ring buffer filled by the IRQ4 handler, drained by main. */
#define RING_SIZE 64
static volatile uint8_t ring[RING_SIZE];
static volatile uint32_t ring_head;   /* written by the handler */
static volatile uint32_t ring_tail;   /* written by main */
static volatile uint32_t ring_dropped;

static void serial_irq(unsigned irq)
{
	(void)irq;
	while (inb(UART_LSR) & LSR_DR) {
		uint8_t c = inb(COM1);
		if (ring_head - ring_tail < RING_SIZE) {
			ring[ring_head % RING_SIZE] = c;
			ring_head = ring_head + 1;
		} else {
			ring_dropped = ring_dropped + 1;
		}
	}
}

static void idle_tick(unsigned irq)
{
	(void)irq;   /* only here to wake the main loop */
}

static uint32_t count;
static char last_out = '\n';

static void emit(uint8_t c)
{
	if (c >= 'a' && c <= 'z')
		c = (uint8_t)(c - 'a' + 'A');
	serial_putc((char)c);
	last_out = (char)c;
	count++;
}

/* The carrier is down: the VMM has delivered every byte it will ever send. */
static bool carrier_lost(void)
{
	return !(inb(UART_MSR) & MSR_DCD);
}

static void finish(void)
{
	if (last_out != '\n')
		serial_putc('\n');
	if (ring_dropped)
		printk("echo: %u bytes dropped\n", ring_dropped);
	printk("echo: %u bytes\n", count);
	exit(0);
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	serial_puts("echo: ready\n");

	irq_register(0, idle_tick);
	pit_start((uint16_t)(PIT_HZ / IDLE_HZ), 2);
	pic_unmask(0);

	/* Phase 1: first line by polling LSR; sleep until the next tick when
	 * nothing is there. */
	irq_disable();
	for (;;) {
		bool dcd_low = carrier_lost();          /* MSR before LSR */
		if (serial_rx_ready()) {                /* LSR bit 0 */
			uint8_t c = (uint8_t)serial_getc();
			if (c == EOT)
				finish();
			emit(c);
			if (c == '\n')
				break;
		} else if (dcd_low) {
			finish();
		} else {
			cpu_halt_wait();
		}
	}

	/* Phase 2: the rest by interrupt. */
	irq_register(4, serial_irq);
	outb(UART_IER, IER_RX);
	pic_unmask(4);
	for (;;) {
		/* interrupts are off here: the ring cannot change under us */
		if (ring_tail != ring_head) {
			uint8_t c = ring[ring_tail % RING_SIZE];
			ring_tail = ring_tail + 1;
			if (c == EOT)
				finish();
			emit(c);
			continue;
		}
		bool dcd_low = carrier_lost();          /* MSR before LSR */
		if (dcd_low && !(inb(UART_LSR) & LSR_DR))
			finish();
		cpu_halt_wait();   /* RX interrupt, idle tick, or nothing pending */
	}
}
