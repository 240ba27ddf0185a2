/*
 * race: a real data race between the main loop and the timer interrupt,
 * meant to be recorded, then debugged backwards in gdb.
 *
 * `shared` is a small stack of items.  The main loop (the producer) keeps it
 * topped up to RACE_LEVEL items with push_item(); the PIT interrupt handler
 * timer_tick() (the consumer) pops one item per tick and overwrites the
 * freed slot with POISON.
 *
 * THE BUG: push_item() reads shared.count, computes the new item (the
 * "window", make_item()) and only then writes shared.items[n] and
 * shared.count, without masking interrupts.  If a tick lands inside that
 * window, the handler pops item n-1 and poisons items[n-1]; main then
 * stores its item at items[n] and sets count = n + 1, so the poisoned slot
 * is below count again and is treated as valid.  check_stack() (which runs
 * with interrupts off, correctly) then finds it:
 *
 *     PANIC: race: items[K] corrupted (0xdeaddead)          -> exit status 3
 *
 * Otherwise, after RACE_TICKS ticks:
 *
 *     race: 20 ticks at 1000 Hz, window 8
 *     race: 20 ticks, no corruption                         -> exit status 0
 *
 * (the first line is printed in both cases).  To find the culprit in gdb:
 * `watch -l shared.items[K]`, then `reverse-continue` lands on the POISON
 * store in timer_tick().
 *
 * How often it fails depends only on timing: where the next tick falls
 * relative to the push.  Each tick pops one item and wakes main, which waits
 * a pseudo-random delay (jitter(), seeded from the TSC: ~0-400
 * instructions) and pushes one item; the window then lies ~170-600
 * instructions after the tick.  The push is hit only if the next tick comes
 * that early: if the tick period is shorter than ~600 instructions (above
 * ~1.6 us/instruction at 1000 Hz), or if the vCPU stalls for most of a tick
 * right inside the window.  At the VMM's ~610 ns/instruction a tick is
 * ~1600 instructions, so with the defaults it rarely fails.  The PVH
 * command line can change the timing (defaults in brackets) to make it
 * likely:
 *   race.hz=N      timer frequency              [RACE_HZ]
 *   race.window=N  make_item() rounds           [RACE_WINDOW]
 *   race.jitter=N  max delay-loop iterations    [RACE_JITTER]
 */
#include "rt.h"

#define RACE_TICKS 20          /* run this many timer ticks */
#define RACE_HZ 1000           /* PIT frequency */
#define RACE_LEVEL 4           /* main keeps this many items on the stack */
/*
 * Size of the race window: rounds of work in make_item(), done between
 * main's read of shared.count and its writes.  Each round is ~6
 * instructions, so the default window is ~60 instructions (plus the call),
 * a few % of a 1 ms tick at the VMM's ~610 ns/instruction.  Bigger = fails
 * more often.
 */
#define RACE_WINDOW 8
/* Max iterations (~6 instructions each) of the random delay before a push. */
#define RACE_JITTER 64
#define POISON 0xdeaddeadu
#define STACK_SLOTS 16

/* The shared structure.  volatile: every access below is a real memory
 * access, in source order. */
struct item_stack {
	uint32_t count;               /* number of valid items */
	uint32_t items[STACK_SLOTS];  /* items[0..count) are valid */
};
static volatile struct item_stack shared;

static volatile uint32_t ticks;        /* timer interrupts so far */
static volatile uint32_t consumed;     /* items popped by the handler */
static volatile uint32_t consumed_sum; /* checksum of popped items */
static volatile uint32_t handler_saw_poison;

static uint32_t window_rounds = RACE_WINDOW;
static uint32_t jitter_max = RACE_JITTER;
static uint32_t rng_state;

/* The timer interrupt handler: pops (consumes) the top item. */
static void timer_tick(unsigned irq)
{
	(void)irq;
	ticks = ticks + 1;
	if (shared.count) {
		uint32_t top = shared.count - 1;
		shared.count = top;
		uint32_t item = shared.items[top];
		if (item == POISON)
			handler_saw_poison = handler_saw_poison + 1;
		consumed_sum = consumed_sum * 31 + item;
		consumed = consumed + 1;
		shared.items[top] = POISON;   /* the freed slot: the corrupting store when main is mid-push */
	}
	if (ticks == RACE_TICKS)
		pic_mask(0);   /* stop: exactly RACE_TICKS ticks */
}

/* Some work that produces the item for slot n; never returns POISON. */
static uint32_t make_item(uint32_t n)
{
	uint32_t v = (n + 1) * 2654435761u;
	for (uint32_t r = 0; r < window_rounds; r++)
		v = (v ^ (v >> 13)) * 0x5bd1e995u + r;
	return v == POISON ? v ^ 1 : v;
}

/* BUGGY: read-modify-write of the shared stack with interrupts enabled. */
static void push_item(void)
{
	uint32_t n = shared.count;        /* read count ...                 */
	uint32_t value = make_item(n);    /* ... the race window ...        */
	shared.items[n] = value;          /* ... write the item ...         */
	shared.count = n + 1;             /* ... and the count              */
}

/* Correct: runs with interrupts off.  No valid slot may hold POISON. */
static void check_stack(void)
{
	irq_disable();
	uint32_t count = shared.count;
	for (uint32_t i = 0; i < count && i < STACK_SLOTS; i++) {
		uint32_t item = shared.items[i];
		if (item == POISON) {
			printk("PANIC: race: items[%u] corrupted (0x%x)\n", i, item);
			exit(3);
		}
	}
	if (count > STACK_SLOTS) {
		printk("PANIC: race: count %u out of range\n", count);
		exit(3);
	}
	irq_enable();
}

/* Pseudo-random delay, so pushes start at varying times after a tick. */
static void jitter(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	uint32_t n = jitter_max ? rng_state % jitter_max : 0;
	for (volatile uint32_t i = 0; i < n; i++)
		;
}

int main(const struct hvm_start_info *si)
{
	uint32_t hz = (uint32_t)cmdline_uint(si, "race.hz", RACE_HZ);
	window_rounds = (uint32_t)cmdline_uint(si, "race.window", RACE_WINDOW);
	jitter_max = (uint32_t)cmdline_uint(si, "race.jitter", RACE_JITTER);
	if (hz < 19)
		hz = 19;   /* the PIT divisor must fit in 16 bits */
	printk("race: %u ticks at %u Hz, window %u\n", RACE_TICKS, hz, window_rounds);

	/* Nondeterministic seed, unless race.seed=N fixes it (a guest that never
	 * reads the TSC replays under ttvm's pmu clock too). */
	rng_state = (uint32_t)cmdline_uint(si, "race.seed", 0);
	if (rng_state == 0)
		rng_state = (uint32_t)rdtsc();
	rng_state |= 1;

	/* Fill the stack before the timer runs (no race possible yet), so
	 * from the first tick on main pushes exactly one item per tick. */
	while (shared.count < RACE_LEVEL)
		push_item();

	irq_register(0, timer_tick);
	pit_start((uint16_t)(PIT_HZ / hz), 2);
	pic_unmask(0);

	while (ticks < RACE_TICKS) {
		/* Sleep while the stack is full enough (race-free wait). */
		irq_disable();
		while (shared.count >= RACE_LEVEL && ticks < RACE_TICKS)
			cpu_halt_wait();
		irq_enable();
		if (ticks >= RACE_TICKS)
			break;
		jitter();
		push_item();
		check_stack();
	}

	check_stack();
	if (handler_saw_poison) {
		printk("PANIC: race: handler consumed %u poisoned items\n", handler_saw_poison);
		return 3;
	}
	printk("race: %u ticks, no corruption\n", ticks);
	return 0;
}
