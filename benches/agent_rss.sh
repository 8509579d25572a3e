#!/usr/bin/env bash
# Resident memory of an idle `perch agent` with a model installed (target: <= 5 MB), for the
# native-only device binary and the one with ONNX; beside it, `perch bench`'s peak RSS on
# the same model as a reference point.
#
#   bash benches/agent_rss.sh            # PROFILE=release for the release profile
#
# Builds the device binaries with the profile the devices get (`compact`, as cross/build.sh
# does, for this machine's target) into target/rss-*/, starts `perch-host serve` and one
# agent on loopback in a temporary directory, pushes models/digits-mlp-trained, waits for it
# to be installed and the agent to sit idle, then reads from /proc: VmRSS (all resident
# pages), split into RssAnon (the agent's own memory: heap, stacks, relocated data) and
# RssFile (pages of the binary and libraries, clean and shared with the page cache), and
# VmHWM (the peak).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

profile=${PROFILE:-compact}
cargo build --release --quiet --bin perch-host
host=target/release/perch-host
declare -A bins
for variant in device device,onnx; do
    dir="target/rss-$profile-${variant/,/-}"
    CARGO_TARGET_DIR=$dir cargo build --profile "$profile" --quiet --no-default-features \
        --features "$variant" --bin perch
    bins[$variant]="$dir/$profile/perch"
done

reg="$tmp/perch-registry.db"
"$host" --registry "$reg" import models/digits-mlp-trained/model.onnx --name digits >/dev/null 2>&1
"$host" --registry "$reg" serve --listen 127.0.0.1:0 --heartbeat 2 2>"$tmp/host.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$tmp/host.log" && break; sleep 0.1; done
addr=$(grep -o "listening on [0-9.:]*" "$tmp/host.log" | cut -d' ' -f3)

status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "profile $profile"
printf '%-26s %10s %10s %10s %10s\n' "binary" "VmRSS KiB" "RssAnon" "RssFile" "VmHWM KiB"
for variant in device device,onnx; do
    name="pi-${variant/,/-}"
    "$host" --registry "$reg" devices add "$name" --group rss --host "$addr" \
        --config "$tmp/$name.toml" >/dev/null 2>&1
    sed -i "s|state_dir = .*|state_dir = \"state-$name\"|; s|7471|0|" "$tmp/$name.toml"
    "${bins[$variant]}" agent --config "$tmp/$name.toml" 2>"$tmp/$name.log" &
    pid=$!
    pids+=($pid)
    for _ in $(seq 100); do grep -q "connected to" "$tmp/$name.log" && break; sleep 0.1; done
    "$host" --registry "$reg" push digits --to "$name" --wait 30 >/dev/null 2>&1
    grep -q "installed digits" "$tmp/$name.log" || { echo "agent $name did not install:"; cat "$tmp/$name.log"; exit 1; }
    sleep 5
    printf '%-26s %10s %10s %10s %10s\n' "perch agent ($variant)" "$(status $pid VmRSS)" \
        "$(status $pid RssAnon)" "$(status $pid RssFile)" "$(status $pid VmHWM)"
done
model=$(ls "$tmp"/state-pi-device/models/*.perch | head -1)
peak=$("${bins[device]}" bench "$model" --iterations 1000 --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("peak_rss_kib"))')
printf '%-26s %10s %10s %10s %10s\n' "perch bench (device)" "-" "-" "-" "$peak"
