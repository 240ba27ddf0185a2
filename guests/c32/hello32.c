/*
 * hello32: a 32-bit PVH guest that stays in 32-bit protected mode (no paging, no long mode),
 * like guests built for i386. It prints, fills a small array through a function (for gdb
 * sessions: breakpoints, watchpoints and stepping in 32-bit code) and exits with status 0:
 *
 *   hello32 from ttvm
 *   hello32: total 140
 */

static inline void outb(unsigned short port, unsigned char value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static void put(const char *s)
{
	while (*s)
		outb(0x3f8, (unsigned char)*s++);
}

static void put_dec(unsigned int v)
{
	char buf[12];
	int i = 0;
	do {
		buf[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		outb(0x3f8, (unsigned char)buf[--i]);
}

struct point {
	int x;
	int y;
};

volatile struct point path[8];
volatile unsigned int total;

__attribute__((noinline)) unsigned int visit(int k)
{
	path[k].x = k;
	path[k].y = k * k;
	total += (unsigned int)path[k].y;
	return total;
}

void main32(unsigned int start_info)
{
	(void)start_info;
	put("hello32 from ttvm\n");
	for (int k = 0; k < 8; k++)
		visit(k);
	put("hello32: total ");
	put_dec(total);
	put("\n");
	outb(0xf4, 0);
	for (;;)
		__asm__ volatile("cli; hlt");
}
