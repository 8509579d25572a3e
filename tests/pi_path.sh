#!/usr/bin/env bash
# Runs README's "Put perch on a Raspberry Pi" block as it is, on loopback, so that the README
# cannot rot: the commands are taken from README.md, not copied here.
#
#   tests/pi_path.sh [--host-bin DIR] [--device-bin FILE] [--keep]
#
# --host-bin DIR   holds this machine's perch-host and perch (default: target/debug)
# --device-bin F   the binary the simulated Pi runs (default: dist/aarch64-unknown-linux-gnu/perch
#                  when qemu-aarch64 is here and that file is newer than the sources, else
#                  DIR/perch); an ARM binary runs under qemu
# --keep           keep the work directory (printed) instead of removing it
#
# What stands in for what, and nothing else:
# - the Pi is a directory: `ssh pi@… CMD` runs CMD in its home, `scp FILES pi@…:` copies into
#   it, `sudo` runs its command, and `install-agent.sh` installs under its root (PERCH_ROOT);
# - `systemctl restart perch-agent.service` starts the unit's ExecStart (paths under that
#   root) in the background, with the agent's local API on a free port: the simulated Pi
#   shares this machine's loopback, where 7471 may be taken;
# - an ARM binary copied to the Pi is run through qemu (what binfmt_misc does on machines
#   that register it);
# - `cross/build.sh TARGET` and `cargo build --release --bin perch-host` hand over the
#   binaries above instead of building (CI built them already);
# - the host's address 192.168.1.10 and the ports 7470 and 7480 become 127.0.0.1 and free
#   ports.
# Then it checks the agent's /health and that /predict, with the features named in another
# order, gives the label `perch run` gives on this machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
host_bin="$root/target/debug"
device_bin=""
keep=false
while (($#)); do
    case "$1" in
        --host-bin) host_bin=$(cd "$2" && pwd); shift ;;
        --device-bin) device_bin=$(realpath "$2"); shift ;;
        --keep) keep=true ;;
        *) echo "pi_path.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
for b in perch perch-host; do
    [[ -x "$host_bin/$b" ]] || { echo "pi_path.sh: no $host_bin/$b (cargo build first, or --host-bin)" >&2; exit 1; }
done

target=aarch64-unknown-linux-gnu
qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
dist="$root/dist/$target/perch"
if [[ -z "$device_bin" ]]; then
    newest_source=$(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -type f -newer "$dist" 2>/dev/null | head -n 1 || true)
    if [[ -x "$dist" ]] && command -v "${qemu[0]}" >/dev/null && [[ -z "$newest_source" ]]; then
        device_bin=$dist
    else
        device_bin="$host_bin/perch"
        if [[ ! -x "$dist" ]]; then why="no $dist (cross/build.sh $target makes it)"
        elif ! command -v "${qemu[0]}" >/dev/null; then why="no ${qemu[0]} on this machine"
        else why="$dist is older than $newest_source"; fi
    fi
fi
# e_machine of the ELF header: 0xb7 aarch64, 0x3e x86_64, 0x28 arm.
machine() { od -An -t x2 -j 18 -N 2 "$1" | tr -d ' \n'; }
if [[ $(machine "$device_bin") == 00b7 ]]; then
    command -v "${qemu[0]}" >/dev/null || { echo "pi_path.sh: $device_bin is aarch64 and there is no ${qemu[0]}" >&2; exit 1; }
    echo "pi_path.sh: the Pi runs $device_bin, an aarch64 binary, under ${qemu[*]}"
else
    echo "pi_path.sh: the Pi runs the host's $device_bin (${why:-as asked})"
fi

work=$(mktemp -d /tmp/perch-pi-path.XXXXXX)
block_pid=""
cleanup() {
    local status=$?
    if [[ -n "$block_pid" ]]; then kill -TERM -- "-$block_pid" 2>/dev/null || true; fi
    if [[ -f "$work/pi/agent.pid" ]]; then kill -TERM "$(cat "$work/pi/agent.pid")" 2>/dev/null || true; fi
    if ((status != 0)); then
        for log in "$work/pi/agent.log" "$work/host/commands.log"; do
            [[ -f "$log" ]] && { echo "--- $log"; tail -n 40 "$log"; }
        done
    fi
    if $keep || ((status != 0)); then echo "pi_path.sh: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- The block, from README.md ------------------------------------------------------------
block=$(awk '
    /^## Put perch on a Raspberry Pi/ { section = 1; next }
    section && /^## / { exit }
    section && /^```sh$/ { inside = 1; next }
    section && inside && /^```$/ { exit }
    inside { print }
' "$root/README.md")
[[ -n "$block" ]] || { echo "pi_path.sh: README.md has no sh block under '## Put perch on a Raspberry Pi'" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
sync_port=$(free_port)
http_port=$(free_port)
while [[ "$http_port" == "$sync_port" ]]; do http_port=$(free_port); done
substituted=${block//192.168.1.10:7470/127.0.0.1:$sync_port}
substituted=${substituted//0.0.0.0:7470/127.0.0.1:$sync_port}
substituted=${substituted//127.0.0.1:7480/127.0.0.1:$http_port}
if grep -vE '^[[:space:]]*#' <<<"$substituted" | grep -qE '(7470|7480|192\.168\.)'; then
    echo "pi_path.sh: README's block has an address this script does not map:" >&2
    grep -vE '^[[:space:]]*#' <<<"$substituted" | grep -E '(7470|7480|192\.168\.)' >&2
    exit 1
fi

# --- This computer: a checkout's files the block reads, and the binaries ------------------
mkdir -p "$work/host/cross" "$work/host/target/release" "$work/shims" "$work/pi/home" "$work/pi/root"
ln -s "$root/models" "$work/host/models"
cp "$root/cross/install-agent.sh" "$root/cross/perch-agent.service" "$work/host/cross/"
ln -s "$host_bin/perch-host" "$work/host/target/release/perch-host"
cat >"$work/host/cross/build.sh" <<EOF
#!/usr/bin/env bash
# pi_path.sh's stand-in for cross/build.sh: hands over the device binary already built.
set -euo pipefail
[[ "\$*" == "$target" ]] || { echo "cross/build.sh (pi_path.sh): expected '$target', got '\$*'" >&2; exit 1; }
mkdir -p "dist/$target"
cp "$device_bin" "dist/$target/perch"
echo "cross/build.sh (pi_path.sh): dist/$target/perch is $device_bin"
EOF
chmod +x "$work/host/cross/build.sh"

# --- The shims ----------------------------------------------------------------------------
pi_home="$work/pi/home"
pi_root="$work/pi/root"
cat >"$work/shims/cargo" <<EOF
#!/usr/bin/env bash
set -euo pipefail
[[ "\$*" == "build --release --bin perch-host" ]] || { echo "cargo (pi_path.sh): unexpected 'cargo \$*'" >&2; exit 1; }
echo "cargo (pi_path.sh): target/release/perch-host is $host_bin/perch-host"
EOF
cat >"$work/shims/scp" <<EOF
#!/usr/bin/env bash
# scp SRC... pi@HOST:[DIR] -> the simulated Pi's home. ARM binaries get a qemu launcher in
# their place, the binary itself kept beside (binfmt_misc's job on a machine that has it).
set -euo pipefail
args=("\$@")
dest=\${args[-1]}
[[ "\$dest" == *:* ]] || { echo "scp (pi_path.sh): the last argument must be HOST:[DIR]" >&2; exit 1; }
dir="$pi_home/\${dest#*:}"
mkdir -p "\$dir" "$work/pi/elf"
for src in "\${args[@]:0:\${#args[@]}-1}"; do
    name=\$(basename "\$src")
    if [[ \$(od -An -t x2 -j 18 -N 2 "\$src" 2>/dev/null | tr -d ' \n') == 00b7 && \$(head -c 4 "\$src") == \$'\x7fELF' ]]; then
        cp "\$src" "$work/pi/elf/\$name"
        printf '#!/bin/sh\n# pi_path.sh: an aarch64 binary, run under qemu\nTRACT_CPU_AARCH64_KIND=a53 exec ${qemu[*]} %s "\$@"\n' "$work/pi/elf/\$name" >"\$dir/\$name"
        chmod +x "\$dir/\$name"
    else
        cp -p "\$src" "\$dir/\$name"
    fi
    echo "scp (pi_path.sh): \$src -> pi:\${dest#*:}\$name"
done
EOF
cat >"$work/shims/ssh" <<EOF
#!/usr/bin/env bash
# ssh pi@HOST CMD... -> CMD in the simulated Pi's home, its root at PERCH_ROOT.
set -euo pipefail
shift
cd "$pi_home"
PATH="$work/shims:\$PATH" PERCH_ROOT="$pi_root" exec bash -c "\$*"
EOF
cat >"$work/shims/sudo" <<'EOF'
#!/usr/bin/env bash
exec "$@"
EOF
cat >"$work/shims/systemctl" <<EOF
#!/usr/bin/env bash
# systemctl for the simulated Pi: restart runs the unit's ExecStart in the background.
set -euo pipefail
verb=\$1
unit=\${2:-}
case "\$verb" in
    daemon-reload|enable) echo "systemctl (pi_path.sh): \$verb \$unit" ;;
    start|restart)
        file="$pi_root/etc/systemd/system/\$unit"
        [[ -f "\$file" ]] || { echo "systemctl (pi_path.sh): no unit \$file" >&2; exit 1; }
        [[ -f "$work/pi/agent.pid" ]] && kill "\$(cat "$work/pi/agent.pid")" 2>/dev/null || true
        exec_start=\$(sed -n 's/^ExecStart=//p' "\$file")
        cmd=()
        for word in \$exec_start; do
            if [[ "\$word" == /* ]]; then cmd+=("$pi_root\$word"); else cmd+=("\$word"); fi
        done
        # The agent's API on a free port: the simulated Pi shares this machine's loopback.
        config="$work/pi/agent-run.toml"
        for i in "\${!cmd[@]}"; do
            if [[ "\${cmd[\$i]}" == */etc/perch/agent.toml ]]; then
                sed 's|^http = .*|http = "127.0.0.1:0"|' "\${cmd[\$i]}" >"\$config"
                cmd[\$i]=\$config
            fi
        done
        env_line=\$(sed -n 's/^Environment=//p' "\$file")
        workdir=\$(sed -n 's/^WorkingDirectory=//p' "\$file")
        mkdir -p "$pi_root\$workdir"
        (cd "$pi_root\$workdir" || exit 1; env \$env_line nohup "\${cmd[@]}" >>"$work/pi/agent.log" 2>&1 & echo \$! >"$work/pi/agent.pid")
        echo "systemctl (pi_path.sh): \$verb \$unit: \${cmd[*]}"
        ;;
    *) echo "systemctl (pi_path.sh): unexpected 'systemctl \$*'" >&2; exit 1 ;;
esac
EOF
chmod +x "$work/shims/"*

# --- Run it -------------------------------------------------------------------------------
printf '%s\n' "$substituted" >"$work/host/readme-block.sh"
echo "pi_path.sh: running README's block (192.168.1.10:7470 and 0.0.0.0:7470 -> 127.0.0.1:$sync_port, 127.0.0.1:7480 -> 127.0.0.1:$http_port):"
sed 's/^/    /' "$work/host/readme-block.sh"
started=$(date +%s)
(
    cd "$work/host"
    export PATH="$work/shims:$PATH"
    exec setsid bash -euo pipefail readme-block.sh
) >"$work/host/commands.log" 2>&1 &
block_pid=$!
if ! wait "$block_pid"; then
    echo "pi_path.sh: README's block failed:" >&2
    cat "$work/host/commands.log" >&2
    exit 1
fi
sed 's/^/  | /' "$work/host/commands.log"
echo "pi_path.sh: README's block ran in $(($(date +%s) - started)) s; push --wait exited 0 (the Pi installed the model)"

# --- Check the Pi -------------------------------------------------------------------------
agent_addr=""
for _ in $(seq 1 100); do
    agent_addr=$(sed -n 's|.*agent serving http://\([0-9.:]*\).*|\1|p' "$work/pi/agent.log" | tail -n 1)
    [[ -n "$agent_addr" ]] && break
    sleep 0.1
done
[[ -n "$agent_addr" ]] || { echo "pi_path.sh: the agent never said where it serves" >&2; exit 1; }
request() { # METHOD PATH [BODY] -> the response body
    local host=${agent_addr%:*} port=${agent_addr##*:} body=${3:-}
    exec 3<>"/dev/tcp/$host/$port"
    printf '%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$1" "$2" "$agent_addr" "${#body}" "$body" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}
# The process answering is the binary asked for: qemu running the aarch64 file, or the host's.
agent_pid=$(cat "$work/pi/agent.pid")
agent_exe=$(readlink "/proc/$agent_pid/exe" || true)
if [[ $(machine "$device_bin") == 00b7 ]]; then
    [[ "$agent_exe" == */qemu-aarch64* ]] && tr '\0' ' ' <"/proc/$agent_pid/cmdline" | grep -q "/pi/elf/perch agent" \
        || { echo "pi_path.sh: the agent (pid $agent_pid) is $agent_exe, not qemu-aarch64 running the aarch64 perch" >&2; exit 1; }
else
    cmp -s "$agent_exe" "$device_bin" \
        || { echo "pi_path.sh: the agent (pid $agent_pid) runs $agent_exe, not $device_bin" >&2; exit 1; }
fi
echo "pi_path.sh: the agent is pid $agent_pid: $(tr '\0' ' ' <"/proc/$agent_pid/cmdline")"
health=$(request GET /health)
echo "pi_path.sh: the Pi's /health: $health"
grep -q '"name":"wine"' <<<"$health" || { echo "pi_path.sh: the Pi does not run wine" >&2; exit 1; }

# The first test row, once as a CSV for perch run here, once as named values in reverse
# order for the Pi's /predict.
wine_test="$root/models/demo/wine_test.csv"
header=$(head -n 1 "$wine_test")
row=$(sed -n 2p "$wine_test")
IFS=, read -r -a names <<<"$header"
IFS=, read -r -a values <<<"$row"
object=""
for ((i = ${#names[@]} - 1; i >= 0; i--)); do
    [[ "${names[$i]}" == target ]] && continue
    object+="${object:+, }\"${names[$i]}\": ${values[$i]}"
done
printf '%s\n%s\n' "$header" "$row" >"$work/one.csv"
"$host_bin/perch-host" --registry "$work/host/perch-registry.db" models export wine@production -o "$work/wine.perch" 2>/dev/null
here=$("$host_bin/perch" run "$work/wine.perch" --input "$work/one.csv" --json 2>/dev/null)
answer=$(request POST /predict "{\"input\": {$object}}")
label() { sed -n 's/.*"label":\[\([0-9-]*\)\].*/\1/p'; }
want=$(label <<<"$here")
got=$(label <<<"$answer")
echo "pi_path.sh: perch run here: label $want; the Pi's /predict by name: $answer"
[[ -n "$want" && "$want" == "$got" ]] || { echo "pi_path.sh: the Pi answered label '$got', perch run '$want'" >&2; exit 1; }
echo "pi_path.sh: ok: README's Pi path works ($(basename "$device_bin") on the Pi: $(machine "$device_bin" | sed 's/00b7/aarch64 under qemu/; s/003e/x86_64/'))"
