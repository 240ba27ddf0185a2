/*
 * crash: triple-faults on purpose.  Prints
 *
 *     crash: about to triple fault
 *
 * then loads an IDT with limit 0 and divides by zero (no int n / int3 /
 * ud2): the #DE cannot be delivered (#GP), neither can the #GP (#DF), nor
 * the #DF: triple fault, i.e. a shutdown the VMM must report.  Nothing is
 * printed after the line above and the debug-exit port is never written.
 */
#include "rt.h"

int main(const struct hvm_start_info *si)
{
	(void)si;
	serial_puts("crash: about to triple fault\n");

	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) empty_idt = { 0, 0 };
	__asm__ volatile("lidt %0" : : "m"(empty_idt) : "memory");

	/* divl %ecx with ecx = 0: divide error, the first of three faults */
	uint32_t eax = 1, edx = 0, zero = 0;
	__asm__ volatile("divl %2" : "+a"(eax), "+d"(edx) : "c"(zero) : "cc");

	serial_puts("crash: still alive?!\n");
	return 2;
}
