/*
 * PVH entry of the 32-bit test guests: the VMM (or QEMU -kernel) enters _start32 in 32-bit
 * protected mode with paging off, flat segments, interrupts off and EBX = physical address
 * of struct hvm_start_info. The guest stays in that mode: set a stack, call main32(ebx).
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

	.section .note.pvh, "a", @note
	.balign 4
	.long 4                         /* namesz */
	.long 4                         /* descsz: a 32-bit entry address */
	.long XEN_ELFNOTE_PHYS32_ENTRY  /* type */
	.asciz "Xen"
	.balign 4
	.long _start32

	.section .text.entry, "ax"
	.code32
	.globl _start32
	.type _start32, @function
_start32:
	cli
	cld
	movl	$stack_top, %esp
	pushl	%ebx
	call	main32
1:	cli
	hlt
	jmp	1b
	.size _start32, . - _start32

	.section .stack, "aw", @nobits
	.balign 16
	.space 8192
stack_top:

	.section .note.GNU-stack, "", @progbits
