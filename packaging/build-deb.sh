#!/usr/bin/env bash
# Build the Debian packages of xdpcast from a built binary and library:
#   packaging/build-deb.sh --bin target/release/xdpcast \
#       --lib target/release/libxdpcast.so --out target/dist
# `cargo xtask dist` runs it on the release build; tests/package.rs on the
# binary under test. Prints the paths of the two .debs, one a line:
#
# xdpcast: /usr/bin/xdpcast (the XDP object is embedded in it; stripped),
# /usr/lib/<multiarch>/libxdpcast.so, /usr/include/xdpcast{,_status}.h,
# man pages (clap_mangen, `xdpcast man`), bash/zsh/fish completions
# (clap_complete, `xdpcast completions`), the systemd template unit
# xdpcast-receive@.service with /etc/xdpcast/example.conf, the Python
# status reader, README, docs and the Grafana dashboard in
# /usr/share/doc/xdpcast, and /usr/lib/xdpcast/udp-receiver (a link to
# xdpcast, for a PATH that puts /usr/lib/xdpcast first).
#
# xdpcast-udpcast: takes udp-receiver's place. Its preinst diverts udpcast's
# /usr/bin/udp-receiver (and its man page) to udp-receiver.udpcast with
# dpkg-divert, and the package puts a link to xdpcast there, so Clonezilla
# and FOG scripts run xdpcast with no PATH edit; removing it gives udpcast's
# receiver back. docs/packaging.md says why a diversion.
#
# XDPCAST_MAINTAINER sets the Maintainer field (default: the placeholder
# below, which whoever publishes the packages must replace).
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
maintainer="${XDPCAST_MAINTAINER:-xdpcast maintainers <maintainers@xdpcast.invalid>}"
date="$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")"
mkdir -p "$out"
umask 022

# A Debian changelog for a native package (the version has no revision).
changelog() { # PACKAGE STAGE
    mkdir -p "$2/usr/share/doc/$1"
    sed -e "s/@PACKAGE@/$1/" -e "s/@VERSION@/$version/" -e "s/@MAINTAINER@/$maintainer/" \
        -e "s/@DATE@/$date/" "$here/changelog" | gzip -9n > "$2/usr/share/doc/$1/changelog.gz"
    install -m 0644 "$here/copyright" "$2/usr/share/doc/$1/copyright"
}

# Control files every package gets: md5sums, and the ./ entry 0755 (mktemp
# makes it 0700).
finish() { # STAGE DEB
    chmod 0755 "$1"
    (cd "$1" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z \
        | xargs -0r md5sum) > "$1/DEBIAN/md5sums"
    chmod 0644 "$1/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zgzip --build "$1" "$2" >/dev/null
    echo "$2"
}

stage="$(mktemp -d "$out/stage.XXXXXX")"
compat="$(mktemp -d "$out/stage.XXXXXX")"
trap 'rm -rf "$stage" "$compat"' EXIT

inst() { # MODE SRC DEST
    install -D -m "$1" "$2" "$stage/$3"
}
inst 0755 "$bin" usr/bin/xdpcast
inst 0644 "$lib" "usr/lib/$multiarch/libxdpcast.so"
# As dh_strip does, without a -dbgsym package: no symbols, no debug info
# (the XDP object is data in .rodata and stays).
strip --strip-all --remove-section=.comment --remove-section=.note "$stage/usr/bin/xdpcast"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$stage/usr/lib/$multiarch/libxdpcast.so"
inst 0644 "$root/receiver/include/xdpcast.h" usr/include/xdpcast.h
inst 0644 "$root/receiver/include/xdpcast_status.h" usr/include/xdpcast_status.h
inst 0755 "$root/examples/status_reader.py" usr/share/xdpcast/status_reader.py
inst 0644 "$here/xdpcast-receive@.service" lib/systemd/system/xdpcast-receive@.service
inst 0644 "$here/example.conf" etc/xdpcast/example.conf
inst 0644 "$here/xdpcast.lintian-overrides" usr/share/lintian/overrides/xdpcast
mkdir -p "$stage/usr/lib/xdpcast"
ln -s ../../bin/xdpcast "$stage/usr/lib/xdpcast/udp-receiver"
changelog xdpcast "$stage"
# README and docs, compressed as dh_compress does (over 4 KiB); the Grafana
# dashboard stays as it is, for Grafana's import.
doc="$stage/usr/share/doc/xdpcast"
install -m 0644 "$root/README.md" "$doc/README.md"
install -d "$doc/docs"
install -m 0644 "$root"/docs/*.md "$doc/docs/"
install -m 0644 "$root/docs/grafana-dashboard.json" "$doc/grafana-dashboard.json"
find "$doc" -name '*.md' -size +4k -exec gzip -9n {} +

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
Maintainer: $maintainer
Depends: libc6 (>= 2.34), libgcc-s1
Recommends: python3
Suggests: udpcast, xdpcast-udpcast
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
chmod 0644 "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
SCRIPT
cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
SCRIPT
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"
finish "$stage" "$out/xdpcast_${version}_${arch}.deb"

# xdpcast-udpcast: the link in udpcast's place, and the diversion.
mkdir -p "$compat/usr/bin" "$compat/usr/share/man/man1" "$compat/DEBIAN"
ln -s xdpcast "$compat/usr/bin/udp-receiver"
ln -s xdpcast-udp-receiver.1.gz "$compat/usr/share/man/man1/udp-receiver.1.gz"
changelog xdpcast-udpcast "$compat"
cat > "$compat/DEBIAN/control" <<CONTROL
Package: xdpcast-udpcast
Version: $version
Architecture: all
Maintainer: $maintainer
Depends: xdpcast (>= $version)
Enhances: udpcast
Section: net
Priority: optional
Multi-Arch: foreign
Installed-Size: $(du -sk --exclude=DEBIAN "$compat" | cut -f1)
Description: xdpcast in udp-receiver's place, for Clonezilla and FOG
 Diverts udpcast's /usr/bin/udp-receiver (to udp-receiver.udpcast) and puts
 xdpcast there, which takes udp-receiver's command line unchanged, so
 scripts that run udp-receiver (Clonezilla, FOG) receive through XDP with
 no edit. Removing this package gives udpcast's receiver back.
CONTROL
cat > "$compat/DEBIAN/preinst" <<'SCRIPT'
#!/bin/sh
set -e
divert() { # FILE DIVERTED
    dpkg-divert --package xdpcast-udpcast --add --rename --divert "$2" "$1" >/dev/null
}
if [ "$1" = install ] || [ "$1" = upgrade ]; then
    divert /usr/bin/udp-receiver /usr/bin/udp-receiver.udpcast
    divert /usr/share/man/man1/udp-receiver.1.gz /usr/share/man/man1/udp-receiver.udpcast.1.gz
fi
SCRIPT
cat > "$compat/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
undivert() { # FILE DIVERTED
    dpkg-divert --package xdpcast-udpcast --remove --rename --divert "$2" "$1" >/dev/null
}
if [ "$1" = remove ] || [ "$1" = abort-install ] || [ "$1" = disappear ]; then
    undivert /usr/bin/udp-receiver /usr/bin/udp-receiver.udpcast
    undivert /usr/share/man/man1/udp-receiver.1.gz /usr/share/man/man1/udp-receiver.udpcast.1.gz
fi
SCRIPT
chmod 0755 "$compat/DEBIAN/preinst" "$compat/DEBIAN/postrm"
finish "$compat" "$out/xdpcast-udpcast_${version}_all.deb"
