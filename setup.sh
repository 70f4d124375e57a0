#!/usr/bin/env bash
# Install what xdpcast needs to build and test on Debian/Ubuntu, then build.
#   clang, llvm, libbpf-dev  compile the XDP program (ebpf/xdpcast.bpf.c)
#   iproute2, iputils-ping    network namespaces, veth and checks in tests and the demo
#   util-linux (setpriv)      unprivileged-reader and fallback tests
#   udpcast                   the comparison receiver in `cargo xtask bench`; udp-sender
#                             and udp-receiver in tests/udpcast.rs
#   python3, gcc              the status-page reader examples and the C ABI test
#   man-db                    `man xdpcast-receive` in tests/package.rs (the .deb test)
#   prometheus                promtool and the Prometheus server for tests/monitoring.rs
#                             (the exposition check and the dashboard queries)
#   ethtool                   one TX queue on a veth in tests/xdp.rs (frames on a queue
#                             without a socket); GRO on the veth for the bench's
#                             socket+GRO row
#   nginx-light               the web server of tests/http.rs (receive --http: range
#                             requests, the signed manifest file); each test starts its
#                             own nginx with its own config inside a namespace
#   lintian                   checks the .deb packages (tests/package.rs: -EvIL +pedantic)
#   zstd                      Clonezilla's `udp-receiver ... | zstd -dc` in tests/package.rs
#   tmux                      a real terminal of 80 and 200 columns for `xdpcast monitor`
#                             in tests/api.rs
set -euo pipefail
cd "$(dirname "$0")"

pkgs=(clang llvm libbpf-dev bpftool iproute2 iputils-ping util-linux udpcast python3 gcc libc6-dev prometheus tmux ethtool man-db nginx-light lintian zstd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The tests start Prometheus themselves, on loopback. The package's own
    # service (port 9090 on every address) is not wanted: stop and disable
    # it when this script installed it, so setup opens no port.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    # Likewise nginx's own service (port 80 on every address).
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
    fi
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
echo "setup: building (release)"
cargo build --release --workspace --quiet
echo "setup: done"
