/*
 * ttvm guest mini runtime: serial, IDT/exceptions, PICs, PIT, CMOS, exit.
 * See rt.h for the interface.  Kept small: every instruction costs when the
 * VMM single-steps the guest.
 */
#include "rt.h"
#include <stdarg.h>

#define COM1 0x3f8
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20
#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20
#define IRQ_BASE 0x20
#define DEBUG_EXIT_PORT 0xf4

/* ------------------------------------------------------------------ */
/* exit                                                                */

void exit(int code)
{
	outb(DEBUG_EXIT_PORT, (uint8_t)code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void panic(const char *msg)
{
	serial_puts("PANIC: ");
	serial_puts(msg);
	serial_putc('\n');
	exit(1);
}

/* ------------------------------------------------------------------ */
/* libc bits gcc may call even with -ffreestanding                     */

void *memset(void *d, int c, size_t n)
{
	uint8_t *p = d;
	while (n--)
		*p++ = (uint8_t)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *p = d;
	const uint8_t *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* ------------------------------------------------------------------ */
/* serial (COM1 16550)                                                 */

/* A byte that arrived before serial_init() (input the VMM/QEMU delivered
 * before the guest booted): enabling the FIFO would discard it, so it is
 * kept here and returned first by serial_getc(). */
static int early_rx = -1;

static void serial_init(void)
{
	if (inb(COM1 + 5) & UART_LSR_DR)
		early_rx = inb(COM1);
	outb(COM1 + 1, 0x00);   /* IER: no interrupts */
	outb(COM1 + 3, 0x80);   /* LCR: DLAB on */
	outb(COM1 + 0, 0x01);   /* divisor 1 = 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);   /* LCR: 8N1, DLAB off */
	outb(COM1 + 2, 0x07);   /* FCR: FIFO on, clear both, RX trigger 1 byte */
	outb(COM1 + 4, 0x0b);   /* MCR: DTR, RTS, OUT2 (IRQ line enable) */
}

void serial_putc(char c)
{
	while (!(inb(COM1 + 5) & UART_LSR_THRE))
		;
	outb(COM1, (uint8_t)c);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

bool serial_rx_ready(void)
{
	return early_rx >= 0 || (inb(COM1 + 5) & UART_LSR_DR);
}

int serial_getc(void)
{
	if (early_rx >= 0) {
		int c = early_rx;
		early_rx = -1;
		return c;
	}
	while (!(inb(COM1 + 5) & UART_LSR_DR))
		;
	return inb(COM1);
}

/* Unsigned number in `base`, at least `width` digits wide, padded with `pad`. */
static void put_num(uint64_t v, unsigned base, int width, char pad)
{
	char buf[24];
	int n = 0;
	do {
		unsigned d = (unsigned)(v % base);
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	while (width-- > n)
		serial_putc(pad);
	while (n)
		serial_putc(buf[--n]);
}

void serial_put_hex(uint64_t v)
{
	serial_puts("0x");
	put_num(v, 16, 0, '0');
}

void serial_put_dec(uint64_t v)
{
	put_num(v, 10, 0, '0');
}

void printk(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			serial_putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0;
		bool is_long = false;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == 'l') {
			is_long = true;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			serial_puts(s ? s : "(null)");
			break;
		}
		case 'c':
			serial_putc((char)va_arg(ap, int));
			break;
		case 'd': {
			int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (v < 0) {
				serial_putc('-');
				v = -v;
			}
			put_num((uint64_t)v, 10, width, pad);
			break;
		}
		case 'u':
			put_num(is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 10, width, pad);
			break;
		case 'x':
			put_num(is_long ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t), 16, width, pad);
			break;
		case '\0':
			fmt--;
			break;
		default:
			serial_putc(*fmt);
			break;
		}
	}
	va_end(ap);
}

/* ------------------------------------------------------------------ */
/* 8259A PICs                                                          */

static void pic_init(void)
{
	outb(PIC1_CMD, 0x11);            /* ICW1: edge, cascade, ICW4 */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, IRQ_BASE);       /* ICW2: vector bases 0x20 / 0x28 */
	outb(PIC2_DATA, IRQ_BASE + 8);
	outb(PIC1_DATA, 0x04);           /* ICW3: slave on IRQ2 */
	outb(PIC2_DATA, 0x02);           /*       slave identity 2 */
	outb(PIC1_DATA, 0x01);           /* ICW4: 8086 mode, normal EOI */
	outb(PIC2_DATA, 0x01);
	outb(PIC1_DATA, 0xff);           /* mask everything */
	outb(PIC2_DATA, 0xff);
}

void pic_mask(unsigned irq)
{
	uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
	outb(port, inb(port) | (uint8_t)(1u << (irq & 7)));
}

void pic_unmask(unsigned irq)
{
	if (irq >= 8) {
		outb(PIC2_DATA, inb(PIC2_DATA) & (uint8_t)~(1u << (irq & 7)));
		irq = 2;                 /* cascade */
	}
	outb(PIC1_DATA, inb(PIC1_DATA) & (uint8_t)~(1u << irq));
}

static void pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2_CMD, PIC_EOI);
	outb(PIC1_CMD, PIC_EOI);
}

/* ------------------------------------------------------------------ */
/* 8254 PIT                                                            */

void pit_start(uint16_t divisor, unsigned mode)
{
	outb(0x43, (uint8_t)(0x30 | ((mode & 7) << 1)));   /* ch 0, lo/hi byte, binary */
	outb(0x40, (uint8_t)divisor);
	outb(0x40, (uint8_t)(divisor >> 8));
}

/* ------------------------------------------------------------------ */
/* CMOS, rdrand                                                        */

uint8_t cmos_read(uint8_t reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

bool rdrand_supported(void)
{
	uint32_t a, b, c, d;
	cpuid(1, &a, &b, &c, &d);
	return (c >> 30) & 1;
}

bool rdrand64(uint64_t *out)
{
	if (!rdrand_supported())
		return false;
	for (int tries = 0; tries < 10; tries++) {
		uint64_t v;
		uint8_t ok;
		__asm__ volatile("rdrand %0; setc %1" : "=r"(v), "=qm"(ok) : : "cc");
		if (ok) {
			*out = v;
			return true;
		}
	}
	return false;
}

/* ------------------------------------------------------------------ */
/* PVH command line                                                    */

const char *pvh_cmdline(const struct hvm_start_info *si)
{
	if (!si || !si->cmdline_paddr)
		return NULL;
	const char *s = (const char *)si->cmdline_paddr;
	return *s ? s : NULL;
}

uint64_t cmdline_uint(const struct hvm_start_info *si, const char *key, uint64_t def)
{
	const char *s = pvh_cmdline(si);
	size_t klen = strlen(key);
	if (!s)
		return def;
	while (*s) {
		while (*s == ' ')
			s++;
		size_t i = 0;
		while (i < klen && s[i] == key[i])
			i++;
		if (i == klen && s[i] == '=') {
			uint64_t v = 0;
			for (s += i + 1; *s >= '0' && *s <= '9'; s++)
				v = v * 10 + (uint64_t)(*s - '0');
			return v;
		}
		while (*s && *s != ' ')
			s++;
	}
	return def;
}

/* ------------------------------------------------------------------ */
/* IDT and interrupt dispatch                                          */

struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;            /* 0x8e: present, DPL 0, 64-bit interrupt gate */
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
} __attribute__((packed));

extern char isr_stubs[];   /* 256 stubs, 16 bytes apart */
static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler_t irq_handlers[16];
static exception_handler_t exception_handlers[32];

static void idt_init(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)isr_stubs + 16 * (uint64_t)v;
		idt[v].off_lo = (uint16_t)a;
		idt[v].sel = 0x08;
		idt[v].type = 0x8e;
		idt[v].off_mid = (uint16_t)(a >> 16);
		idt[v].off_hi = (uint32_t)(a >> 32);
	}
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) desc = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" : : "m"(desc) : "memory");
}

void irq_register(unsigned irq, irq_handler_t h)
{
	irq_handlers[irq & 15] = h;
}

void exception_register(unsigned vector, exception_handler_t h)
{
	exception_handlers[vector & 31] = h;
}

void isr_dispatch(struct isr_frame *f)
{
	uint64_t v = f->vector;
	if (v < 32 && exception_handlers[v]) {
		exception_handlers[v](f);
		return;
	}
	if (v < 32) {
		printk("exception %lu at RIP 0x%lx error code 0x%lx\n", v, f->rip, f->error_code);
		exit(EXIT_EXCEPTION);
	}
	if (v < IRQ_BASE + 16) {
		unsigned irq = (unsigned)(v - IRQ_BASE);
		if (irq_handlers[irq])
			irq_handlers[irq](irq);
		else
			printk("spurious irq %u\n", irq);
		pic_eoi(irq);
		return;
	}
	printk("unexpected interrupt vector %lu at RIP 0x%lx\n", v, f->rip);
	exit(EXIT_BAD_VECTOR);
}

/* ------------------------------------------------------------------ */
/* C entry, called by entry.S in long mode with .bss cleared           */

void rt_start(const struct hvm_start_info *si)
{
	serial_init();
	idt_init();
	pic_init();
	if (si->magic != HVM_START_MAGIC) {
		printk("bad hvm_start_info magic 0x%x\n", si->magic);
		exit(EXIT_EXCEPTION);
	}
	exit(main(si));
}
