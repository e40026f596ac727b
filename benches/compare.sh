#!/usr/bin/env bash
# Side-by-side comparison of natterd and Mosquitto on this machine, in one run.
#
# Each scenario runs on a fresh broker, the brokers alternating (A B, then B A) for
# ROUNDS rounds; the broker is pinned to CPU 0 and the load generator to CPU 1.
# Results go to RESULTS (JSON lines); benches/report.py turns them into
# docs/benchmarks.md and docs/benchmarks.svg (medians and natterd/mosquitto ratios).
#
#   bash benches/compare.sh              # ROUNDS=3 DURATION=8 by default
#   ROUNDS=1 DURATION=2 CONNS=2000 bash benches/compare.sh   # quick look
#   ONLY='pairs-qos1-unpaced' bash benches/compare.sh       # scenarios matching a regex;
#                                  prints results, leaves docs/benchmarks.md alone
#   ONLY='...' REPORT=docs/x.md bash benches/compare.sh    # the same, with its own report
#                                  (docs/x.md and docs/x.svg) for the scenarios it ran
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-10000}
ONLY=${ONLY:-}
REPORT=${REPORT:-}
RESULTS=${RESULTS:-target/bench-results.jsonl}
NATTER_PORT=18931
MOSQ_PORT=18932

if ! command -v mosquitto >/dev/null; then
    apt-get update && apt-get install -y mosquitto
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -p natterd -p natter-bench --bins
NATTERD=target/release/natterd
LOAD=target/release/natter-load
WORK=$(mktemp -d)
BROKER_PID=
stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
}
trap 'stop_broker; rm -rf "$WORK"' EXIT

# natterd: default config (auth on, OWASP argon2id), room for the connection tests,
# one account per simulated user with a device token.
cat > "$WORK/natterd.toml" <<CONF
[server]
listen = "127.0.0.1:$NATTER_PORT"
data_dir = "$WORK/natterd-data"
[limits]
max_connections = 60000
# The plain-MQTT scenarios use bench/...; the IM scenarios use Natter's own topics.
[[acl.rules]]
filter = "bench/#"
CONF
"$LOAD" setup --data "$WORK/natterd-data" --config "$WORK/natterd.toml" --users "$CONNS" --tokens \
    --group-members 100 --out "$WORK/creds.txt"

{ cat "$WORK/natterd.toml"; printf '[store]\ndurability = "relaxed"\n'; } > "$WORK/natterd-relaxed.toml"

# Mosquitto: no persistence, TCP_NODELAY, anonymous (it has no token logins).
cat > "$WORK/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
max_connections -1
CONF

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "broker did not open port $1" >&2
    return 1
}

start_broker() { # broker scenario-name
    # The memory scenarios read natterd's resident memory: mimalloc then returns freed
    # pages at once (MIMALLOC_PURGE_DELAY=0) instead of after a delay that an idle
    # broker's threads never reach, so each reading counts what is in use and not
    # what the connect burst freed. Throughput scenarios run with the defaults.
    local purge=10
    case "$2" in *connections) purge=0 ;; esac
    case "$1" in
        natterd)
            # The im-relaxed scenarios: the same with [store] durability = "relaxed"
            # (acknowledged before the disk flush); every other one runs "sync", the default.
            local config="$WORK/natterd.toml"
            case "$2" in im-relaxed:*) config="$WORK/natterd-relaxed.toml" ;; esac
            MIMALLOC_PURGE_DELAY=$purge RUST_LOG=warn taskset -c 0 "$NATTERD" --config "$config" 2>>"$WORK/natterd.log" &
            BROKER_PID=$!
            wait_port "$NATTER_PORT"
            ;;
        mosquitto)
            taskset -c 0 mosquitto -c "$WORK/mosquitto.conf" 2>>"$WORK/mosquitto.log" &
            BROKER_PID=$!
            wait_port "$MOSQ_PORT"
            ;;
    esac
}

run_one() { # broker scenario-name args...
    local broker=$1 name=$2
    shift 2
    local target=(--addr "127.0.0.1:$MOSQ_PORT")
    [ "$broker" = natterd ] && target=(--addr "127.0.0.1:$NATTER_PORT" --credentials "$WORK/creds.txt")
    start_broker "$broker" "$name"
    local line
    if line=$(taskset -c 1 "$LOAD" "${target[@]}" --label "$broker" --broker-pid "$BROKER_PID" \
        --duration "$DURATION" "$@"); then
        echo "$line" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['name']='$name'; d['round']=$ROUND; print(json.dumps(d))" >> "$RESULTS"
        echo "  $broker $name: $line" | cut -c1-220
    else
        echo "  $broker $name: FAILED" >&2
    fi
    stop_broker
    # natterd's store is on disk: the next run starts with this one's writes flushed,
    # rather than paying for their writeback.
    sync
}

SCENARIOS=(
    "pairs-qos1-1k|--qos 1 --rate 1000 pairs --pairs 10"
    "pairs-qos1-20k|--qos 1 --rate 20000 pairs --pairs 10"
    "pairs-qos1-unpaced|--qos 1 --window 64 pairs --pairs 10"
    "group-100|--qos 1 --window 8 group --members 100 --publishers 1"
    "fanin-50|--qos 1 --window 16 fanin --publishers 50"
    "connections|connections --count $CONNS"
    "im:pairs-qos1-unpaced|--im --qos 1 --window 64 pairs --pairs 10"
    "im:pairs-qos1-1k|--im --qos 1 --rate 1000 pairs --pairs 10"
    "im:group-100|--im --qos 1 --window 8 group --members 100 --publishers 1"
    "im:connections|--im connections --count $CONNS"
    "im-relaxed:pairs-qos1-unpaced|--im --qos 1 --window 64 pairs --pairs 10"
    "im-relaxed:pairs-qos1-1k|--im --qos 1 --rate 1000 pairs --pairs 10"
    "storm|storm --count $CONNS --deadline 60"
)

mkdir -p "$(dirname "$RESULTS")"
: > "$RESULTS"
for ROUND in $(seq "$ROUNDS"); do
    echo "round $ROUND/$ROUNDS"
    if [ $((ROUND % 2)) -eq 1 ]; then ORDER="natterd mosquitto"; else ORDER="mosquitto natterd"; fi
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then
            continue
        fi
        read -r -a args <<< "${entry#*|}"
        if [ "${name#im:}" != "$name" ] || [ "${name#im-relaxed:}" != "$name" ]; then
            # Natter's IM topics: natterd only (compared with its own plain-MQTT path).
            run_one natterd "$name" "${args[@]}"
            continue
        fi
        for broker in $ORDER; do
            run_one "$broker" "$name" "${args[@]}"
        done
    done
done

if [ -n "$ONLY" ] && [ -n "$REPORT" ]; then
    python3 benches/report.py "$RESULTS" "$REPORT" "${REPORT%.md}.svg" \
        --command "ONLY='$ONLY' REPORT=$REPORT ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS bash benches/compare.sh"
    echo "wrote $REPORT and ${REPORT%.md}.svg"
    exit 0
fi
if [ -n "$ONLY" ]; then
    echo "ONLY=$ONLY: results in $RESULTS, report not written"
    exit 0
fi
python3 benches/report.py "$RESULTS" docs/benchmarks.md docs/benchmarks.svg \
    --command "ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS bash benches/compare.sh"
echo "wrote docs/benchmarks.md and docs/benchmarks.svg"
