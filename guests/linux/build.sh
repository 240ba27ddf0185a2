#!/usr/bin/env bash
# Builds ttvm's Linux test kernel (a PVH vmlinux with DWARF, the kernel's gdb scripts and
# built-in KUnit suites) from Debian's linux-source-6.1, once per machine: the result is
# cached under a key made of every input (source package version, config fragment, extra
# tests and config, the build recipe's version, the compiler), so a second call returns at
# once.
#
#   guests/linux/build.sh [--extra-test FILE.c]... [--extra-config FRAGMENT]...
#   guests/linux/build.sh --cmdline [kunit|initrd]
#
# Prints the path of the vmlinux on stdout (with --cmdline: the kernel command line that
# boots it under ttvm for that workload). Progress goes to stderr. Environment:
#   TTVM_LINUX_CACHE  where builds are kept (default ${XDG_CACHE_HOME:-~/.cache}/ttvm/linux)
#   TTVM_LINUX_JOBS   make -j (default: the number of CPUs)
# An --extra-test file is compiled into the kernel (lib/ttvm_extra/), e.g. a KUnit suite.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
package=linux-source-6.1
tarball=/usr/src/linux-source-6.1.tar.xz
cache=${TTVM_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ttvm/linux}
jobs=${TTVM_LINUX_JOBS:-$(nproc)}

# The command lines that boot this kernel under ttvm (--cmdline [kunit|initrd]):
#   console=ttyS0 earlyprintk=ttyS0  the 16550A on COM1 is the console
#   acpi=off                         no ACPI tables (ACPI is built in only to drop the MP table scan)
#   noxsave                          XSAVE/XRSTOR are not executed by ttvm's fallback (FXSAVE is used)
#   reboot=k                         a reboot resets through the i8042 (ttvm exit 123)
#   panic=-1                         a panic resets at once instead of hanging
# kunit:  + kunit_shutdown=reboot    after the KUnit suites, reset (no init is looked for)
# initrd: + kunit.enable=0           skip the suites; /init of the initramfs runs and reboots
# No APIC option is needed: ttvm's CPUID has no local APIC, so Linux keeps the 8259 PICs.
BASE_CMDLINE="console=ttyS0 earlyprintk=ttyS0 acpi=off noxsave reboot=k panic=-1"

extra_tests=()
extra_configs=()
want=vmlinux
while [ $# -gt 0 ]; do
  case $1 in
    --extra-test) extra_tests+=("$(realpath "$2")"); shift 2 ;;
    --extra-config) extra_configs+=("$(realpath "$2")"); shift 2 ;;
    --cmdline)
      want=cmdline
      workload=kunit
      if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then workload=$2; shift; fi
      shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$want" = cmdline ]; then
  case $workload in
    kunit) echo "$BASE_CMDLINE kunit_shutdown=reboot" ;;
    initrd) echo "$BASE_CMDLINE kunit.enable=0" ;;
    *) echo "build.sh: --cmdline takes kunit or initrd, not '$workload'" >&2; exit 2 ;;
  esac
  exit 0
fi

say() { echo "linux: $*" >&2; }

# Bump when the build steps below change what is built (the cache key includes it; the
# rest of this script, e.g. the command lines above, does not rebuild anything).
RECIPE=1

# Install what the build needs (Debian's packages; root, as on the project's machines).
need_pkgs=()
dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$package")
for tool in bc:bc flex:flex bison:bison cpio:cpio xz:xz-utils make:make gcc:gcc perl:perl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
done
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "build.sh: needs ${need_pkgs[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

version=$(dpkg-query -W -f='${Version}' "$package")
key=$(
  {
    echo "$package $version"
    echo "recipe $RECIPE"
    # The options only (comments change nothing that is built).
    grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$here/config.fragment"
    for f in "${extra_tests[@]}"; do echo "== $(basename "$f")"; cat "$f"; done
    for f in "${extra_configs[@]}"; do echo "== $(basename "$f")"; grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$f"; done
    gcc --version | head -1
  } | sha256sum | cut -c1-16
)
dir="$cache/$key"
if [ -f "$dir/done" ]; then
  echo "$dir/vmlinux"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
say "waiting for the build lock ($cache/.lock)"
flock 9
if [ -f "$dir/done" ]; then # built by another process meanwhile
  echo "$dir/vmlinux"
  exit 0
fi

started=$(date +%s)
rm -rf "$dir"
mkdir -p "$dir"
say "building $package $version (key $key) in $dir: a few minutes"
tar -C "$dir" -xf "$tarball"
src="$dir/linux-source-6.1"

if [ ${#extra_tests[@]} -gt 0 ]; then
  mkdir -p "$src/lib/ttvm_extra"
  : > "$src/lib/ttvm_extra/Makefile"
  for f in "${extra_tests[@]}"; do
    cp "$f" "$src/lib/ttvm_extra/"
    echo "obj-y += $(basename "${f%.c}").o" >> "$src/lib/ttvm_extra/Makefile"
  done
  echo "obj-y += ttvm_extra/" >> "$src/lib/Makefile"
fi

cd "$src"
make -s tinyconfig >&2
cat "$here/config.fragment" "${extra_configs[@]}" > "$dir/fragment.config"
scripts/kconfig/merge_config.sh -m .config "$dir/fragment.config" >/dev/null
make -s olddefconfig >&2
# Every option of the fragment must have stuck (a dependency may have dropped it).
missing=0
while IFS= read -r line; do
  case $line in
    CONFIG_*=*) opt=${line%%=*}; grep -qx "$line" .config || { say "option did not stick: $line ($(grep "^$opt=\|^# $opt " .config || echo unset))"; missing=1; } ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; ! grep -q "^$opt=" .config || { say "option did not stick: $line"; missing=1; } ;;
  esac
done < "$dir/fragment.config"
[ $missing -eq 0 ] || { echo "build.sh: the kernel configuration lacks options above" >&2; exit 1; }

say "make -j$jobs vmlinux scripts_gdb"
make -s -j"$jobs" vmlinux scripts_gdb >&2
ln -sf linux-source-6.1/vmlinux "$dir/vmlinux"
ln -sf linux-source-6.1/vmlinux-gdb.py "$dir/vmlinux-gdb.py"
echo "$BASE_CMDLINE kunit_shutdown=reboot" > "$dir/cmdline"
{
  echo "package=$package $version"
  echo "key=$key"
  echo "build_seconds=$(( $(date +%s) - started ))"
} > "$dir/build-info"
touch "$dir/done"
say "built in $(( $(date +%s) - started )) s: $dir/vmlinux"
echo "$dir/vmlinux"
