/*
 * /init of ttvm's test initramfs: proves a kernel reached user space, then
 * resets the machine.
 *
 *     ttvm-init: hello from user space (pid 1)
 *     ttvm-init: uname Linux
 *     ttvm-init: release <release>
 *     ttvm-init: rebooting
 *
 * Then reboot(RESTART): with `reboot=k` the kernel resets through the i8042
 * (ttvm exit 123). Freestanding (no libc), x86-64 SYSCALL ABI.
 */

#define NR_WRITE 1
#define NR_OPEN 2
#define NR_GETPID 39
#define NR_UNAME 63
#define NR_MKDIR 83
#define NR_SYNC 162
#define NR_MOUNT 165
#define NR_REBOOT 169

#define O_WRONLY 1
#define REBOOT_MAGIC1 0xfee1dead
#define REBOOT_MAGIC2 672274793
#define REBOOT_RESTART 0x01234567

static long sys(long nr, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

static int console = 1;
static char line[128];
static struct {
	char sysname[65], nodename[65], release[65], version[65], machine[65], domain[65];
} uts;
static const char dev[] = "/dev", devtmpfs[] = "devtmpfs", console_path[] = "/dev/console";

static void say(const char *a, const char *b, const char *c)
{
	unsigned long n = 0;
	for (const char *p = a; *p && n < sizeof line - 2; p++)
		line[n++] = *p;
	for (const char *p = b; *p && n < sizeof line - 2; p++)
		line[n++] = *p;
	for (const char *p = c; *p && n < sizeof line - 2; p++)
		line[n++] = *p;
	line[n++] = '\n';
	sys(NR_WRITE, console, (long)line, (long)n, 0, 0);
}

static const char *decimal(long v)
{
	static char buf[24];
	char *p = buf + sizeof buf - 1;
	*p = 0;
	do {
		*--p = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return p;
}

void _start(void)
{
	/* The initramfs has no /dev/console node: mount devtmpfs to get one. */
	sys(NR_MKDIR, (long)dev, 0755, 0, 0, 0);
	sys(NR_MOUNT, (long)devtmpfs, (long)dev, (long)devtmpfs, 0, 0);
	long fd = sys(NR_OPEN, (long)console_path, O_WRONLY, 0, 0, 0);
	if (fd >= 0)
		console = (int)fd;
	say("ttvm-init: hello from user space (pid ", decimal(sys(NR_GETPID, 0, 0, 0, 0, 0)), ")");
	if (sys(NR_UNAME, (long)&uts, 0, 0, 0, 0) == 0) {
		say("ttvm-init: uname ", uts.sysname, " ");
		say("ttvm-init: release ", uts.release, "");
	}
	say("ttvm-init: rebooting", "", "");
	sys(NR_SYNC, 0, 0, 0, 0, 0);
	sys(NR_REBOOT, REBOOT_MAGIC1, REBOOT_MAGIC2, REBOOT_RESTART, 0, 0);
	for (;;)
		;
}
