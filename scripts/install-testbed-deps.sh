#!/usr/bin/env bash
# Install the packages the flowshift testbed needs (Open vSwitch userspace datapath, iperf3,
# iproute2, ethtool, nftables, conntrack, tcpdump, ping, and the RFC 3489 STUN client and
# server used by `flowshift testbed check`) on Debian/Ubuntu.
#
# Idempotent: exits 0 without touching apt when every tool is already present. Root only.
# It never starts a service: the testbed starts its own private OVS daemons, and
# policy-rc.d is set for the duration of the install so package scripts cannot start any.
set -euo pipefail

readonly TOOLS=(iperf3 ovs-vswitchd ethtool nft conntrack tcpdump ip ss ping stun stund timeout)
readonly PACKAGES=(iperf3 openvswitch-switch iproute2 ethtool nftables conntrack tcpdump
    iputils-ping stun-client stun-server coreutils)

have() {
    # ovs-vswitchd, nft, conntrack, stund and ip live in /usr/sbin, which non-root PATHs may
    # lack.
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

missing=()
for tool in "${TOOLS[@]}"; do
    have "$tool" || missing+=("$tool")
done

if ((${#missing[@]} == 0)); then
    echo "install-testbed-deps: all present (${TOOLS[*]}); nothing to do"
    exit 0
fi

if ((EUID != 0)); then
    echo "install-testbed-deps: missing ${missing[*]}; run as root to install" >&2
    exit 1
fi

echo "install-testbed-deps: missing ${missing[*]}"

# Forbid package maintainer scripts from starting services (exit code 101 = action forbidden),
# unless the administrator already has a policy in place.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if ((created_policy)); then rm -f "$policy"; fi
}
trap cleanup EXIT

echo "install-testbed-deps: apt-get update"
apt-get update
echo "install-testbed-deps: apt-get install ${PACKAGES[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"

still=()
for tool in "${TOOLS[@]}"; do
    have "$tool" || still+=("$tool")
done
if ((${#still[@]} != 0)); then
    echo "install-testbed-deps: still missing after install: ${still[*]}" >&2
    exit 1
fi
echo "install-testbed-deps: installed; all present (${TOOLS[*]})"
