/*
 * faults: time-stamp reads inside exception handlers that return.  A KVM
 * that single-steps with the guest's trap flag loses it when the CPU
 * delivers an exception (the gate clears TF), so the whole handler could run
 * unseen inside one step; its RDTSC would then read the host's TSC.  Each
 * case takes one exception, whose handler reads the TSC and returns past
 * the faulting instruction; the read is compared with one just before:
 *
 *     faults: time-stamp reads in exception handlers
 *     #DE: +<ticks>
 *     #BP: +<ticks>
 *     #UD: +<ticks>
 *     #GP: +<ticks>          (or "#GP: no fault here" where RDMSR of an unknown
 *                             MSR does not fault)
 *     #PF: +<ticks>
 *     faults: ok             (or "faults: FAIL <what>" and status 1)
 *
 * Under the single-step clock the TSC is virtual, so each delta is a few
 * hundred ticks and identical on replay; a read that ran unseen shows the
 * host's TSC, far ahead.  A delta above 1,000,000 ticks fails the guest.
 * Exit status 0.
 */
#include "rt.h"

#define LIMIT 1000000
/* Not mapped: the runtime's page tables cover the first 1 GiB. */
#define UNMAPPED 0x40000000ull

static volatile uint64_t handler_tsc;
static volatile uint64_t handler_vector;
/* Bytes from the faulting RIP to the next instruction (0 for a trap). */
static volatile uint64_t skip;
static bool failed;

static void on_exception(struct isr_frame *f)
{
	handler_tsc = rdtsc();
	handler_vector = f->vector;
	f->rip += skip;
}

static void check(const char *name, uint64_t vector, uint64_t before, bool may_not_fault)
{
	if (handler_vector != vector) {
		if (may_not_fault && handler_vector == ~0ull) {
			printk("%s: no fault here\n", name);
			return;
		}
		printk("faults: FAIL %s: handler saw vector %lu\n", name, handler_vector);
		failed = true;
		return;
	}
	uint64_t delta = handler_tsc - before;
	printk("%s: +%lu\n", name, delta);
	if (delta > LIMIT) {
		printk("faults: FAIL %s: the handler's time-stamp read ran unseen\n", name);
		failed = true;
	}
}

static uint64_t arm(uint64_t bytes_to_skip)
{
	handler_vector = ~0ull;
	skip = bytes_to_skip;
	return rdtsc();
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	static const uint64_t vectors[] = { 0, 3, 6, 13, 14 };
	for (unsigned i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
		exception_register((unsigned)vectors[i], on_exception);
	printk("faults: time-stamp reads in exception handlers\n");

	/* Explicit encodings, so the handler knows each instruction's length. */
	uint64_t t = arm(2);
	__asm__ volatile(".byte 0xf7, 0xf1" : : "a"(1), "d"(0), "c"(0) : "cc", "memory"); /* div ecx */
	check("#DE", 0, t, false);

	t = arm(0);
	__asm__ volatile(".byte 0xcc" : : : "memory"); /* int3: a trap, RIP is already past it */
	check("#BP", 3, t, false);

	t = arm(2);
	__asm__ volatile(".byte 0x0f, 0x0b" : : : "memory"); /* ud2 */
	check("#UD", 6, t, false);

	t = arm(2);
	__asm__ volatile(".byte 0x0f, 0x32" : : "c"(0x4b564dffu) : "rax", "rdx", "memory"); /* rdmsr */
	check("#GP", 13, t, true);

	t = arm(2);
	__asm__ volatile(".byte 0x8b, 0x18" : : "a"(UNMAPPED) : "rbx", "memory"); /* mov ebx, [rax] */
	check("#PF", 14, t, false);

	if (failed)
		return 1;
	printk("faults: ok\n");
	return 0;
}
