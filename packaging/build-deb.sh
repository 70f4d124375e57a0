#!/usr/bin/env bash
# Build the Debian package of xdpcast from a built binary and library:
#   packaging/build-deb.sh --bin target/release/xdpcast \
#       --lib target/release/libxdpcast.so --out target/dist
# `cargo xtask dist` runs it on the release build; tests/package.rs on the
# binary under test. Prints the path of the .deb.
#
# Contents: /usr/bin/xdpcast (the XDP object is embedded in it),
# /usr/lib/<multiarch>/libxdpcast.so, /usr/include/xdpcast{,_status}.h,
# man pages (clap_mangen, `xdpcast man`), bash/zsh/fish completions
# (clap_complete, `xdpcast completions`), the systemd template unit
# xdpcast-receive@.service with /etc/xdpcast/example.conf, the Python
# status reader, and /usr/lib/xdpcast/udp-receiver (a link to xdpcast for
# Clonezilla/FOG scripts: put /usr/lib/xdpcast first in PATH; udpcast's own
# /usr/bin/udp-receiver is left alone).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="" lib="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --lib) lib="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] && [ -f "$lib" ] && [ -n "$out" ] || {
    echo "usage: $0 --bin XDPCAST --lib LIBXDPCAST.SO --out DIR" >&2; exit 2; }

version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
multiarch="$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")"
mkdir -p "$out"
stage="$(mktemp -d "$out/stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
umask 022

inst() { # MODE SRC DEST
    install -D -m "$1" "$2" "$stage/$3"
}
inst 0755 "$bin" usr/bin/xdpcast
inst 0644 "$lib" "usr/lib/$multiarch/libxdpcast.so"
# As dh_strip does: no debug info in the package (the XDP object is data in
# .rodata and stays).
strip --strip-debug "$stage/usr/bin/xdpcast" "$stage/usr/lib/$multiarch/libxdpcast.so"
inst 0644 "$root/receiver/include/xdpcast.h" usr/include/xdpcast.h
inst 0644 "$root/receiver/include/xdpcast_status.h" usr/include/xdpcast_status.h
inst 0755 "$root/examples/status_reader.py" usr/share/xdpcast/status_reader.py
inst 0644 "$here/xdpcast-receive@.service" lib/systemd/system/xdpcast-receive@.service
inst 0644 "$here/example.conf" etc/xdpcast/example.conf
inst 0644 "$here/copyright" usr/share/doc/xdpcast/copyright
mkdir -p "$stage/usr/lib/xdpcast"
ln -s ../../bin/xdpcast "$stage/usr/lib/xdpcast/udp-receiver"

man="$stage/usr/share/man/man1"
"$bin" man "$man"
gzip -9n "$man"/*.1
"$bin" completions bash | install -D -m 0644 /dev/stdin "$stage/usr/share/bash-completion/completions/xdpcast"
"$bin" completions zsh | install -D -m 0644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_xdpcast"
"$bin" completions fish | install -D -m 0644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/xdpcast.fish"

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: xdpcast
Version: $version
Architecture: $arch
Maintainer: xdpcast developers <xdpcast@localhost>
Depends: libc6 (>= 2.34), libgcc-s1
Recommends: python3
Suggests: udpcast
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Description: kernel-bypass multicast receiver for disk images
 Receives one disk image or file multicast to hundreds of machines: an XDP
 program steers the session's frames into AF_XDP sockets, pinned workers
 copy the blocks into a file, block device or pipe, and a status page in
 shared memory shows progress. Speaks its own protocol (NACK and FEC repair,
 resume) and udpcast's (udp-sender, Clonezilla, FOG).
CONTROL
echo /etc/xdpcast/example.conf > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

deb="$out/xdpcast_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
