#!/usr/bin/env bash
# Memory of `perch agent` around one oversized POST /predict (issue 13: a 15.7 MB body of
# 560,000 rows took the agent from 9 MB to 1.05 GB and left 964 MB resident).
#
#   bash benches/predict_memory.sh                  # builds and measures this checkout
#   PERCH=DIR/perch PERCH_HOST=DIR/perch-host bash benches/predict_memory.sh   # other builds
#
# Starts `perch-host serve` and one agent on loopback in a temporary directory, pushes a
# wine classifier, then reads the agent's VmRSS before, sends the oversized request, and
# reads VmHWM (peak) and VmRSS after it; then the same around a request of max_batch (256)
# rows. Release builds unless PERCH / PERCH_HOST are given.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
if [[ -z ${PERCH:-} || -z ${PERCH_HOST:-} ]]; then
    cargo build --release --quiet --bin perch --bin perch-host
    PERCH=target/release/perch
    PERCH_HOST=target/release/perch-host
fi
status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

reg="$tmp/perch-registry.db"
"$PERCH_HOST" --registry "$reg" train tests/data/corpus/datasets/wine/wine_train.csv \
    --target target --model logistic --name wine >/dev/null 2>&1
"$PERCH_HOST" --registry "$reg" serve --listen 127.0.0.1:0 --http off 2>"$tmp/host.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$tmp/host.log" && break; sleep 0.1; done
addr=$(grep -o "listening on [0-9.:]*" "$tmp/host.log" | cut -d' ' -f3)
"$PERCH_HOST" --registry "$reg" devices add pi --group m --host "$addr" \
    --config "$tmp/pi.toml" >/dev/null 2>&1
sed -i "s|7471|0|" "$tmp/pi.toml"
"$PERCH" agent --config "$tmp/pi.toml" 2>"$tmp/pi.log" &
pid=$!
pids+=($pid)
for _ in $(seq 100); do grep -qs "agent serving" "$tmp/pi.log" && break; sleep 0.1; done
api=$(grep -o "agent serving http://[0-9.:]*" "$tmp/pi.log" | cut -d/ -f3)
"$PERCH_HOST" --registry "$reg" push wine --to pi --wait 30 >/dev/null 2>&1
sleep 1

python3 - "$tmp" <<'PY'
import csv, json, sys
rows = [r[:-1] for r in csv.reader(open("tests/data/corpus/datasets/wine/wine_train.csv"))][1:]
# One-digit values, as compact as the review's request: 560,000 rows in 15.7 MB.
rows = [[int(float(v)) % 10 for v in r] for r in rows]
big = [rows[i % len(rows)] for i in range(560_000)]
dump = lambda v: json.dumps(v, separators=(",", ":"))
open(sys.argv[1] + "/big.json", "w").write(dump({"inputs": big}))
open(sys.argv[1] + "/batch.json", "w").write(dump({"inputs": big[:256]}))
PY
post() {
    curl -s -o "$tmp/answer" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "@$1" "http://$api/predict"
}
printf 'agent idle with the model: VmRSS %s KiB\n' "$(status $pid VmRSS)"
size=$(stat -c %s "$tmp/big.json")
code=$(post "$tmp/big.json")
sleep 1
printf 'oversized /predict (%s bytes, 560000 rows): HTTP %s, peak VmHWM %s KiB, VmRSS after %s KiB\n' \
    "$size" "$code" "$(status $pid VmHWM)" "$(status $pid VmRSS)"
head -c 200 "$tmp/answer"; echo
code=$(post "$tmp/batch.json")
sleep 1
printf '/predict of 256 rows: HTTP %s, peak VmHWM %s KiB, VmRSS after %s KiB\n' \
    "$code" "$(status $pid VmHWM)" "$(status $pid VmRSS)"
