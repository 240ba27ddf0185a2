/*
 * fences: time-stamp reads right after instructions that some KVMs run
 * together with the next one in a single step (`lfence; rdtsc` is one step
 * on kvm_pvm, so the RDTSC would run unseen and read the host's TSC). Each
 * read is compared with a plain RDTSC just before it:
 *
 *     fences: time-stamp reads after fences
 *     lfence;rdtsc: +<ticks>
 *     mfence;rdtsc: +<ticks>
 *     sfence;rdtsc: +<ticks>
 *     rdrand;rdtsc: +<ticks>       (or "rdrand;rdtsc: unsupported")
 *     rdtscp: +<ticks>             (or "rdtscp: unsupported")
 *     fences: ok                   (or "fences: FAIL <what>" and status 1)
 *
 * Under the single-step clock the TSC is virtual (1 GHz of guest time, 100
 * guest ns per step by default), so each delta is a few hundred ticks and
 * identical on replay; an RDTSC that ran unseen shows the host's TSC, far
 * ahead. A delta above 1,000,000 ticks fails the guest. Exit status 0.
 */
#include "rt.h"

#define LIMIT 1000000

static uint64_t edx_eax(uint32_t lo, uint32_t hi)
{
	return ((uint64_t)hi << 32) | lo;
}

static uint64_t lfence_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
	return edx_eax(lo, hi);
}

static uint64_t mfence_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("mfence; rdtsc" : "=a"(lo), "=d"(hi));
	return edx_eax(lo, hi);
}

static uint64_t sfence_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("sfence; rdtsc" : "=a"(lo), "=d"(hi));
	return edx_eax(lo, hi);
}

static uint64_t rdrand_rdtsc(void)
{
	uint32_t lo, hi;
	uint64_t r;
	__asm__ volatile("rdrand %2; rdtsc" : "=a"(lo), "=d"(hi), "=r"(r) : : "cc");
	(void)r;
	return edx_eax(lo, hi);
}

static bool rdtscp_supported(void)
{
	uint32_t a = 0x80000001, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return d & (1u << 27);
}

static uint64_t rdtscp(void)
{
	uint32_t lo, hi, aux;
	__asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux));
	return edx_eax(lo, hi);
}

static int failed;

static void check(const char *what, uint64_t (*read)(void))
{
	uint64_t before = rdtsc();
	uint64_t after = read();
	uint64_t delta = after - before;
	printk("%s: +%lu\n", what, delta);
	if (delta > LIMIT) {
		printk("fences: FAIL %s read a time-stamp far ahead\n", what);
		failed = 1;
	}
}

int main(const struct hvm_start_info *si)
{
	(void)si;
	serial_puts("fences: time-stamp reads after fences\n");
	check("lfence;rdtsc", lfence_rdtsc);
	check("mfence;rdtsc", mfence_rdtsc);
	check("sfence;rdtsc", sfence_rdtsc);
	if (rdrand_supported())
		check("rdrand;rdtsc", rdrand_rdtsc);
	else
		serial_puts("rdrand;rdtsc: unsupported\n");
	if (rdtscp_supported())
		check("rdtscp", rdtscp);
	else
		serial_puts("rdtscp: unsupported\n");
	if (!failed)
		serial_puts("fences: ok\n");
	return failed;
}
