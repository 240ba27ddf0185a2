/*
 * PVH entry and interrupt stubs for the ttvm test guests.
 *
 * The VMM (or QEMU -kernel) enters _start32 in 32-bit protected mode with
 * paging off, flat segments, interrupts off and EBX = physical address of
 * struct hvm_start_info.  We load our own GDT, enable PAE + EFER.LME +
 * paging with statically built identity page tables (first 1 GiB, 2 MiB
 * pages), far-jump to 64-bit code, set up the stack, clear .bss and call
 * rt_start(start_info) in rt.c.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define CR4_PAE (1 << 5)
#define CR0_PE (1 << 0)
#define CR0_PG (1 << 31)
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

/* The PVH note: name "Xen", type 18, desc = 32-bit physical entry point.
 * desc is 8 bytes (like Linux's 64-bit vmlinux): readers take the low 32
 * bits, and QEMU 7.x reads 8 bytes regardless. */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4                         /* namesz */
	.long 8                         /* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY  /* type */
	.asciz "Xen"
	.balign 4
	.quad _start32

	.section .text.entry, "ax"
	.code32
	.globl _start32
	.type _start32, @function
_start32:
	cli
	cld
	movl	%ebx, %esi              /* keep start_info across the switch */
	lgdt	gdt_desc
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0              /* now in compatibility mode */
	ljmp	$KERNEL_CS, $start64
	.size _start32, . - _start32

	.code64
start64:
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	$stack_top, %esp        /* image lives below 4 GiB */
	xorl	%ebp, %ebp              /* terminates gdb backtraces */
	movl	%esi, %ebx              /* upper halves are undefined after the switch */
	/* clear .bss (8-byte aligned by the linker script) */
	movl	$__bss_start, %edi
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	shrl	$3, %ecx
	xorl	%eax, %eax
	rep stosq
	movl	%ebx, %edi              /* rt_start(const struct hvm_start_info *) */
	call	rt_start
1:	cli
	hlt
	jmp	1b

/*
 * Interrupt stubs: one per vector, each 16 bytes apart so rt.c can compute
 * their addresses (isr_stubs + 16 * vector).  Vectors without a CPU error
 * code push a 0 so every frame looks the same.  isr_common saves all 15
 * general registers (no FPU/SSE state: guests never use it), calls
 * isr_dispatch(struct isr_frame *) and returns with iretq.
 */
	.balign 16
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	nop; nop                        /* CPU pushed an error code */
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set vec, vec + 1
	.endr

	.balign 16
isr_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, %rdi
	cld
	call	isr_dispatch
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp               /* vector + error code */
	iretq

	.section .rodata
	.balign 8
gdt:
	.quad 0                         /* null */
	.quad 0x00af9a000000ffff        /* 0x08: 64-bit code, ring 0 */
	.quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_end:
	.globl gdt_desc
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt                       /* lgdt in 32-bit mode reads 4 bytes of base */

/* Identity map of the first 1 GiB with 2 MiB pages, built at link time
 * (no page-table setup code to execute). */
	.section .data.pagetables, "aw"
	.balign 4096
pml4:
	.quad pdpt + 0x3                /* present, writable */
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x3
	.fill 511, 8, 0
pd:
	.set i, 0
	.rept 512
	.quad (i << 21) + 0x83          /* present, writable, 2 MiB page */
	.set i, i + 1
	.endr

	.section .stack, "aw", @nobits
	.balign 16
stack_bottom:
	.skip 16384
	.globl stack_top
stack_top:

	.section .note.GNU-stack, "", @progbits
