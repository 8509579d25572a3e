#!/usr/bin/env bash
# Installs the perch agent on a device (run there as root): the binary, its configuration
# (the file `perch-host devices add NAME` wrote on the host), a `perch` system user and the
# systemd unit; then starts it.
#
#   sudo ./install-agent.sh ./perch ./NAME.toml
#
# Copy the three files first, e.g.:
#   scp dist/aarch64-unknown-linux-gnu/perch NAME.toml cross/install-agent.sh \
#       cross/perch-agent.service pi@raspberrypi.local:
# Re-running it upgrades the binary and the configuration and restarts the agent.
#
# PERCH_ROOT=DIR installs under DIR instead of / (tests/pi_path.sh simulates a Pi so): no
# user is made and files keep the caller as owner; systemctl is still called.
set -euo pipefail

bin=${1:?usage: install-agent.sh PERCH_BINARY AGENT_CONFIG}
config=${2:?usage: install-agent.sh PERCH_BINARY AGENT_CONFIG}
root=${PERCH_ROOT:-}
here=$(cd "$(dirname "$0")" && pwd)
unit="$here/perch-agent.service"
[[ -f "$unit" ]] || { echo "install-agent.sh: $unit is missing (copy it beside this script)" >&2; exit 1; }

"$bin" --version >/dev/null || { echo "install-agent.sh: $bin does not run on this board (wrong target?)" >&2; exit 1; }

owner=()
if [[ -z "$root" ]]; then
    [[ $(id -u) == 0 ]] || { echo "install-agent.sh: run as root (sudo)" >&2; exit 1; }
    id perch >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin perch
    owner=(-o root -g perch)
fi
install -D -m 0755 "$bin" "$root/usr/local/bin/perch"
install -d -m 0750 "${owner[@]}" "$root/etc/perch"
# The configuration holds the device key: readable by the agent's user only.
install -m 0640 "${owner[@]}" "$config" "$root/etc/perch/agent.toml"
# The state directory systemd makes is /var/lib/perch; point the agent at it.
sed -i "s|^state_dir = .*|state_dir = \"$root/var/lib/perch\"|" "$root/etc/perch/agent.toml"
[[ -z "$root" ]] || mkdir -p "$root/var/lib/perch"
install -D -m 0644 "$unit" "$root/etc/systemd/system/perch-agent.service"
systemctl daemon-reload
systemctl enable perch-agent.service
systemctl restart perch-agent.service
echo "install-agent.sh: perch agent installed and started (journalctl -u perch-agent -f)"
