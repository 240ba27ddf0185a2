/*
 * ttvm guest mini runtime: the interface every test guest uses.
 *
 * The runtime (entry.S + rt.c) boots from the 32-bit PVH entry into long
 * mode with the first 1 GiB identity-mapped, sets up serial (COM1, 115200
 * 8N1), an IDT with all 256 gates and the two 8259A PICs (remapped to
 * vectors 0x20-0x2f, everything masked), then calls the guest's
 *     int main(const struct hvm_start_info *si);
 * and exits with main's return value (low byte) through the debug-exit port.
 *
 * Constraints (the VMM's CPU is an instruction emulator): ring 0 only, no
 * `int n`/`int3`, no SSE/x87/MMX, and each guest stays far below 200,000
 * executed instructions, so wait for interrupts with hlt, never spin.
 */
#ifndef TTVM_RT_H
#define TTVM_RT_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long int64_t;
typedef int int32_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* ---- PVH boot information (xen/include/public/arch-x86/hvm/start_info.h) ---- */
#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	uint32_t magic;          /* HVM_START_MAGIC */
	uint32_t version;        /* 0, or 1 when the memmap fields are valid */
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;  /* NUL-terminated ASCII, 0 if none */
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;   /* array of struct hvm_memmap_table_entry */
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;           /* 1 = RAM (E820 numbering) */
	uint32_t reserved;
};

#define HVM_MEMMAP_TYPE_RAM 1

/* ---- exit codes used by the runtime itself ---- */
#define EXIT_EXCEPTION 0x7f      /* CPU exception, vectors 0-31 */
#define EXIT_BAD_VECTOR 0x7e     /* interrupt on a vector >= 0x30 */

/* ---- port I/O and small CPU helpers ---- */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline void irq_disable(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void irq_enable(void) { __asm__ volatile("sti" : : : "memory"); }

/*
 * Sleep until the next interrupt.  Call with interrupts DISABLED, right
 * after finding the wake-up condition false; returns with interrupts
 * disabled again.  `sti` only takes effect after the following instruction,
 * so no interrupt can slip in between the condition check and the `hlt`
 * (no missed wake-up).  Idiom:
 *
 *     irq_disable();
 *     while (!condition)
 *             cpu_halt_wait();
 *     irq_enable();
 */
static inline void cpu_halt_wait(void)
{
	__asm__ volatile("sti; hlt; cli" : : : "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* Compiler barrier: keeps memory accesses on their side of this line. */
#define barrier() __asm__ volatile("" : : : "memory")

/* ---- runtime services (rt.c) ---- */
void exit(int code) __attribute__((noreturn));
void panic(const char *msg) __attribute__((noreturn));   /* "PANIC: msg", exit 1 */

void serial_putc(char c);                 /* '\n' is sent as-is (no CR) */
void serial_puts(const char *s);
void serial_put_hex(uint64_t v);           /* 0x prefix, no leading zeros */
void serial_put_dec(uint64_t v);
/* Polled input.  serial_rx_ready() is LSR bit 0 (data ready), or a byte
 * that arrived before the runtime enabled the FIFO; serial_getc() polls. */
int serial_getc(void);
bool serial_rx_ready(void);
void printk(const char *fmt, ...);         /* %s %c %d %u %x %lx %lu %ld %%, width/0 flag */

void pic_mask(unsigned irq);
void pic_unmask(unsigned irq);
typedef void (*irq_handler_t)(unsigned irq);
void irq_register(unsigned irq, irq_handler_t h);   /* runtime sends the EOI */

/* Stack layout built by isr_common in entry.S (lowest address first). */
struct isr_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss;       /* pushed by the CPU */
};
/* A handler for CPU exception `vector` (0-31) that returns to the frame's RIP (which it
 * may change); without one, an exception ends the guest with EXIT_EXCEPTION. */
typedef void (*exception_handler_t)(struct isr_frame *f);
void exception_register(unsigned vector, exception_handler_t h);

#define PIT_HZ 1193182u
/* Program PIT channel 0 with `mode` (2 = rate generator, 3 = square wave). */
void pit_start(uint16_t divisor, unsigned mode);

uint8_t cmos_read(uint8_t reg);
bool rdrand_supported(void);               /* CPUID.1:ECX bit 30 */
bool rdrand64(uint64_t *out);              /* false if unsupported or no entropy */

/* PVH helpers */
const char *pvh_cmdline(const struct hvm_start_info *si);   /* NULL if none/empty */
/* Value of "key=N" on the command line (decimal), or `def` if absent. */
uint64_t cmdline_uint(const struct hvm_start_info *si, const char *key, uint64_t def);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
size_t strlen(const char *s);

/* Provided by each guest. */
int main(const struct hvm_start_info *si);

#endif
