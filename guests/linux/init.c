/*
 * /init of ttvm's test initramfs: proves a kernel reached user space, then
 * resets the machine. Static, no libc start-up beyond glibc's own.
 *
 *     ttvm-init: hello from user space (pid 1)
 *     ttvm-init: uname <sysname> <release>
 *     ttvm-init: rebooting
 *
 * Then reboot(RB_AUTOBOOT): with `reboot=k` the kernel resets through the
 * i8042 (ttvm exit 123).
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

static void say(int fd, const char *text)
{
	(void)!write(fd, text, strlen(text));
}

int main(void)
{
	/* The initramfs has no /dev/console node: mount devtmpfs to get one. */
	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int fd = open("/dev/console", O_WRONLY);
	if (fd < 0)
		fd = 1;
	char line[256];
	snprintf(line, sizeof line, "ttvm-init: hello from user space (pid %d)\n", (int)getpid());
	say(fd, line);
	struct utsname u;
	if (uname(&u) == 0) {
		snprintf(line, sizeof line, "ttvm-init: uname %s %s\n", u.sysname, u.release);
		say(fd, line);
	}
	say(fd, "ttvm-init: rebooting\n");
	sync();
	reboot(RB_AUTOBOOT);
	return 1;
}
