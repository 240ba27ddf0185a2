#!/usr/bin/env bash
# Builds ttvm's test initramfs: a newc cpio archive holding one freestanding /init (init.c beside
# this script, built with the machine's gcc), cached like the kernel (keyed by the inputs).
#
#   guests/linux/initramfs.sh      prints the path of the .cpio on stdout
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${TTVM_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ttvm/linux}
command -v cpio >/dev/null 2>&1 || {
  [ "$(id -u)" -eq 0 ] || { echo "initramfs.sh: needs cpio" >&2; exit 1; }
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >&2
}
key=$( { cat "$here/init.c" "$0"; gcc --version | head -1; } | sha256sum | cut -c1-16)
out="$cache/initramfs-$key.cpio"
if [ ! -f "$out" ]; then
  mkdir -p "$cache"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  gcc -static -nostdlib -ffreestanding -fno-pic -no-pie -fno-stack-protector -Os -s \
    -Wall -Werror -o "$stage/init" "$here/init.c"
  (cd "$stage" && echo init | cpio -o -H newc --quiet --owner 0:0 > "$out.tmp")
  mv "$out.tmp" "$out"
fi
echo "$out"
