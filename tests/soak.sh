#!/usr/bin/env bash
# Soak: many agents reporting to one host through pushes and host restarts, for minutes;
# then checks that no report was lost or stored twice and prints memory growth.
#
#   bash tests/soak.sh [SECONDS] [DEVICES]      # default 300 s, 16 devices; CI: 75 s, 8
#
# On loopback in a temporary directory, with this checkout's debug binaries (PERCH and
# PERCH_HOST override): `perch-host serve` on a fixed port, DEVICES `perch agent`s closing
# a metrics window every 0.2 s while a client sends each of them single-sample /predict
# requests; every 15 s a push of the other wine version to all of them; every 10 s the host
# is stopped (SIGKILL and SIGTERM in turn) and started again 1-2 s later. At the end the
# traffic stops, each agent is stopped with SIGTERM (queueing its open window) and started
# again with long windows until its queue is empty, then the host's database is checked:
# - lost: predictions answered 200 that no stored report counts (per device, the sum of
#   the stored reports' `requests` must equal the answered requests), and sequence numbers
#   the agent handed out that are neither stored nor still queued;
# - duplicated: reports stored more than once (two rows for one device and the start of a
#   window longer than 0 ms), and stored requests beyond the answered ones.
# Both must be 0 (exit 1 otherwise). Memory: VmRSS of the host and of each agent after the
# warm-up and at the end. SOAK_SELF_TEST=1 deletes one stored report before the check,
# which must then fail.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
devices=${2:-16}
if [[ -z ${PERCH:-} || -z ${PERCH_HOST:-} ]]; then
    cargo build --quiet --bin perch --bin perch-host
    dir=${CARGO_TARGET_DIR:-target}/debug
    PERCH=$dir/perch
    PERCH_HOST=$dir/perch-host
fi
PERCH=$(realpath "$PERCH")
PERCH_HOST=$(realpath "$PERCH_HOST")
tmp=$(mktemp -d /tmp/perch-soak.XXXXXX)
host_pid=""
agent_pids=()
cleanup() {
    [[ -n $host_pid ]] && kill -9 "$host_pid" 2>/dev/null || true
    for p in "${agent_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
reg=$tmp/perch-registry.db
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rss() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

listening() {
    local n
    n=$(grep -cs "listening on 127.0.0.1:$port" "$tmp/host.log") || true
    echo "${n:-0}"
}

start_host() {
    local before
    before=$(listening)
    "$PERCH_HOST" --registry "$reg" serve --listen "127.0.0.1:$port" --http off \
        2>>"$tmp/host.log" &
    host_pid=$!
    for _ in $(seq 600); do
        (($(listening) > before)) && return 0
        sleep 0.05
    done
    echo "soak: the host did not start:" >&2
    tail -n 20 "$tmp/host.log" >&2
    exit 1
}

start_agent() {
    local i=$1
    "$PERCH" agent --config "$tmp/pi-$i.toml" 2>>"$tmp/pi-$i.log" &
    agent_pids[i]=$!
    for _ in $(seq 200); do
        local addr
        addr=$({ grep -so "agent serving http://[0-9.:]*" "$tmp/pi-$i.log" || true; } | tail -n 1 | cut -d/ -f3)
        if [[ -n $addr ]] && curl -s -o /dev/null "http://$addr/metrics"; then
            echo "$addr" >"$tmp/pi-$i.addr"
            return 0
        fi
        sleep 0.05
    done
    echo "soak: agent $i did not start" >&2
    exit 1
}

echo "soak: $devices devices, ${seconds}s, host on 127.0.0.1:$port, in $tmp"
for seed in 1 2; do
    "$PERCH_HOST" --registry "$reg" train tests/data/corpus/datasets/wine/wine_train.csv \
        --target target --model logistic --name wine --seed "$seed" >/dev/null 2>&1
done
start_host
for i in $(seq "$devices"); do
    "$PERCH_HOST" --registry "$reg" devices add "pi-$i" --group soak --host "127.0.0.1:$port" \
        --config "$tmp/pi-$i.toml" >/dev/null 2>&1
    sed -i "s|7471|0|; s|report_interval_s = 60|report_interval_s = 0.2|; s|state_dir = .*|state_dir = \"state-$i\"|" \
        "$tmp/pi-$i.toml"
    printf 'backoff_initial_ms = 100\nbackoff_max_ms = 1000\n' >>"$tmp/pi-$i.toml"
    start_agent "$i"
done
"$PERCH_HOST" --registry "$reg" push wine@1 --group soak --wait 60 >/dev/null

# The client: single-sample predictions to every agent, counting the answered ones.
python3 - "$tmp" "$devices" "$seconds" <<'PY' &
import csv, http.client, json, random, sys, time
tmp, devices, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = [r[:-1] for r in csv.reader(open("tests/data/corpus/datasets/wine/wine_test.csv"))][1:]
answered = {i: 0 for i in range(1, devices + 1)}
others = {}
end = time.time() + seconds
while time.time() < end:
    for i in answered:
        addr = open(f"{tmp}/pi-{i}.addr").read().strip()
        body = json.dumps({"input": [float(v) for v in random.choice(rows)]})
        try:
            c = http.client.HTTPConnection(addr, timeout=10)
            c.request("POST", "/predict", body, {"Content-Type": "application/json"})
            status = c.getresponse().status
            c.close()
        except OSError as e:
            status = type(e).__name__
        if status == 200:
            answered[i] += 1
        else:
            others[str(status)] = others.get(str(status), 0) + 1
    time.sleep(0.02)
json.dump({"answered": answered, "others": others}, open(f"{tmp}/client.json", "w"))
PY
client=$!
stop_client() { kill "$client" 2>/dev/null || true; }
trap 'stop_client; cleanup' EXIT

sleep 5
host_rss0=$(rss "$host_pid")
agent_rss0=0
for p in "${agent_pids[@]}"; do agent_rss0=$((agent_rss0 + $(rss "$p"))); done
started=$(date +%s)
restarts=0
pushes=0
next_push=$((started + 15))
version=2
while (($(date +%s) - started < seconds - 5)); do
    sleep 10
    if ((restarts % 2)); then kill -TERM "$host_pid"; else kill -KILL "$host_pid"; fi
    wait "$host_pid" 2>/dev/null || true
    sleep "1.$((RANDOM % 10))"
    start_host
    restarts=$((restarts + 1))
    if (($(date +%s) >= next_push)); then
        # wine@1 after wine@2 is a step back, which a push makes only when asked to.
        back=()
        ((version == 1)) && back=(--rollback)
        "$PERCH_HOST" --registry "$reg" push "wine@$version" --group soak "${back[@]}" >/dev/null
        version=$((3 - version))
        pushes=$((pushes + 1))
        next_push=$(($(date +%s) + 15))
    fi
done
wait "$client"
host_rss1=$(rss "$host_pid")
agent_rss1=0
for p in "${agent_pids[@]}"; do agent_rss1=$((agent_rss1 + $(rss "$p"))); done

# Drain: each agent stops (its open window queued), comes back with long windows, and
# sends what it holds.
for i in $(seq "$devices"); do
    kill -TERM "${agent_pids[i]}"
    wait "${agent_pids[i]}" 2>/dev/null || true
    sed -i "s|report_interval_s = 0.2|report_interval_s = 3600|" "$tmp/pi-$i.toml"
    start_agent "$i"
done
deadline=$(($(date +%s) + 90))
for i in $(seq "$devices"); do
    while :; do
        q=$(curl -s "http://$(cat "$tmp/pi-$i.addr")/health" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["queued_reports"])' || echo 1)
        ((q == 0)) && break
        (($(date +%s) < deadline)) || { echo "soak: pi-$i still holds $q reports" >&2; break; }
        sleep 0.2
    done
done
for p in "${agent_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
kill -TERM "$host_pid"
wait "$host_pid" 2>/dev/null || true
host_pid=""

result=0
python3 - "$tmp" "$devices" "$reg" <<'PY' || result=$?
import json, os, sqlite3, struct, sys
tmp, devices, reg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = json.load(open(f"{tmp}/client.json"))
db = sqlite3.connect(reg)
if os.environ.get("SOAK_SELF_TEST"):
    # Checks the checker: one stored report with requests in it goes missing.
    db.execute("DELETE FROM metrics WHERE rowid = "
               "(SELECT rowid FROM metrics WHERE requests > 0 LIMIT 1)")
lost = duplicated = answered_total = stored_total = 0
for i in range(1, devices + 1):
    name = f"pi-{i}"
    (dev,) = db.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()
    seqs = {s for (s,) in db.execute("SELECT seq FROM metrics WHERE device_id = ?", (dev,))}
    # Each window starts where the one before ended, so windows of some length start at
    # distinct times; two closes in one millisecond (a push and the clock) make a window
    # of 0 ms that shares its start with the next.
    dup_windows = db.execute(
        "SELECT COUNT(*) FROM (SELECT window_start_ms FROM metrics WHERE device_id = ? "
        "AND window_ms > 0 GROUP BY window_start_ms HAVING COUNT(*) > 1)", (dev,)).fetchone()[0]
    stored = db.execute("SELECT COALESCE(SUM(requests), 0) FROM metrics WHERE device_id = ?",
                        (dev,)).fetchone()[0]
    answered = client["answered"][str(i)]
    qdir = f"{tmp}/state-{i}/queue"
    state = open(f"{qdir}/state", "rb").read()
    next_seq = struct.unpack("<Q", state[4:12])[0]
    queued = {int(f.split(".")[0]) for f in os.listdir(qdir) if f.endswith(".report")}
    missing = [s for s in range(1, next_seq) if s not in seqs and s not in queued]
    lost += len(missing) + max(0, answered - stored)
    duplicated += dup_windows + max(0, stored - answered)
    answered_total += answered
    stored_total += stored
    if missing or dup_windows or stored != answered:
        print(f"  {name}: answered {answered}, stored {stored}, seqs 1..{next_seq - 1}, "
              f"missing {missing[:10]}, duplicated windows {dup_windows}")
reports = db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
print(f"soak: {reports} reports stored, {answered_total} predictions answered, "
      f"{stored_total} counted in stored reports; other answers {client['others']}")
print(f"soak: lost {lost}, duplicated {duplicated}")
sys.exit(1 if lost or duplicated else 0)
PY
echo "soak: host restarts $restarts, pushes $pushes"
echo "soak: memory after warm-up -> end: host VmRSS ${host_rss0} -> ${host_rss1} KiB;" \
    "agents' VmRSS summed ${agent_rss0} -> ${agent_rss1} KiB ($devices agents)"
exit $result
