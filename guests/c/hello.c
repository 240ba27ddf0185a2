/*
 * hello: the smallest guest.  Prints a greeting, the PVH command line and
 * the amount of RAM in the PVH memory map, then exits with status 0.
 *
 *     hello from ttvm
 *     cmdline: <command line, or "(none)">
 *     memory: <sum of the RAM (type 1) entries, in KiB> KiB
 */
#include "rt.h"

int main(const struct hvm_start_info *si)
{
	serial_puts("hello from ttvm\n");

	const char *cmdline = pvh_cmdline(si);
	printk("cmdline: %s\n", cmdline ? cmdline : "(none)");

	if (si->version < 1 || !si->memmap_paddr) {
		serial_puts("memory: (no memory map)\n");
		return 0;
	}
	const struct hvm_memmap_table_entry *map = (const void *)si->memmap_paddr;
	uint64_t total = 0;
	for (uint32_t i = 0; i < si->memmap_entries; i++)
		if (map[i].type == HVM_MEMMAP_TYPE_RAM)
			total += map[i].size;
	printk("memory: %lu KiB\n", total >> 10);
	return 0;
}
