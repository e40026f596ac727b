#!/usr/bin/env bash
# Interop: a real natterd (debug build) on a free loopback port, exercised with
# mosquitto_pub/mosquitto_sub and paho-mqtt at QoS 0/1/2, MQTT 3.1.1 and 5, with
# valid and invalid credentials.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin natterd
BIN=target/debug/natterd
WORK=$(mktemp -d)
BROKER_PID=
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

printf '[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n' > "$WORK/config.toml"
NATTERD=("$BIN" --config "$WORK/config.toml" --data "$WORK/data")
echo "alice-pw" | "${NATTERD[@]}" user add alice
echo "bob-pw" | "${NATTERD[@]}" user add bob

RUST_LOG=info "${NATTERD[@]}" --listen 127.0.0.1:0 2> "$WORK/broker.log" &
BROKER_PID=$!
PORT=
for _ in $(seq 100); do
    PORT=$(sed -n 's/.*listening.*addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/broker.log" | head -1)
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/broker.log"; echo "broker did not start"; exit 1; }
echo "natterd on port $PORT"

fail() { echo "FAIL: $*"; echo "--- broker log"; tail -50 "$WORK/broker.log"; exit 1; }

for V in mqttv311 mqttv5; do
    for Q in 0 1 2; do
        OUT="$WORK/sub-$V-$Q.txt"
        timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V "$V" -q "$Q" -u bob -P bob-pw \
            -i "sub-$V-$Q" -t "chat/#" -C 2 -v > "$OUT" &
        SUB=$!
        sleep 0.5
        mosquitto_pub -h 127.0.0.1 -p "$PORT" -V "$V" -q "$Q" -u alice -P alice-pw -t chat/one -m "hello $V q$Q"
        mosquitto_pub -h 127.0.0.1 -p "$PORT" -V "$V" -q "$Q" -u alice -P alice-pw -t chat/two -m "again $V q$Q"
        wait "$SUB" || fail "mosquitto_sub $V q$Q did not get its messages"
        grep -qx "chat/one hello $V q$Q" "$OUT" || fail "first message missing ($V q$Q): $(cat "$OUT")"
        grep -qx "chat/two again $V q$Q" "$OUT" || fail "second message missing ($V q$Q): $(cat "$OUT")"
        echo "ok mosquitto $V QoS $Q"
    done
    if mosquitto_pub -h 127.0.0.1 -p "$PORT" -V "$V" -u alice -P wrong -t chat/x -m x 2>/dev/null; then
        fail "wrong password accepted ($V)"
    fi
    if mosquitto_pub -h 127.0.0.1 -p "$PORT" -V "$V" -t chat/x -m x 2>/dev/null; then
        fail "anonymous client accepted ($V)"
    fi
    echo "ok mosquitto $V refuses bad and missing credentials"
done

# Retained message survives for a later subscriber.
mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t status/alice -m online -r -q 1
GOT=$(timeout 5 mosquitto_sub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -t status/alice -C 1)
[ "$GOT" = "online" ] || fail "retained message: got '$GOT'"
echo "ok mosquitto retained"

python3 .ci/paho_interop.py 127.0.0.1 "$PORT" || fail "paho interop"
echo "interop passed"
