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

cat > "$WORK/config.toml" <<'CONF'
[auth]
argon2_memory_kib = 1024
argon2_iterations = 1
# Plain MQTT topics for the generic interop checks; the IM topics keep their own rules.
[[acl.rules]]
filter = "chat/#"
[[acl.rules]]
filter = "status/#"
[[acl.rules]]
filter = "paho/#"
CONF
NATTERD=("$BIN" --config "$WORK/config.toml" --data "$WORK/data")
echo "alice-pw" | "${NATTERD[@]}" user add alice
echo "bob-pw" | "${NATTERD[@]}" user add bob

start_broker() {
    RUST_LOG=info "${NATTERD[@]}" "$@" --listen 127.0.0.1:0 2> "$WORK/broker.log" &
    BROKER_PID=$!
    PORT=
    for _ in $(seq 100); do
        PORT=$(sed -n 's/.*listening.*addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/broker.log" | head -1)
        [ -n "$PORT" ] && break
        sleep 0.1
    done
    [ -n "$PORT" ] || { cat "$WORK/broker.log"; echo "broker did not start"; exit 1; }
}
start_broker
echo "natterd on port $PORT"

fail() { echo "FAIL: $*"; echo "--- broker log"; tail -50 "$WORK/broker.log"; exit 1; }

# Waits until a mosquitto_sub started with -d has its SUBACK (its debug output, in
# FILE, says so): the subscription is in place, so what is published next reaches it.
# Such subscribers run under `stdbuf -oL` so each line reaches FILE when printed.
subscribed() {
    for _ in $(seq 100); do
        grep -q "received SUBACK" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "no SUBACK for the subscriber writing $1: $(cat "$1")"
}

for V in mqttv311 mqttv5; do
    for Q in 0 1 2; do
        OUT="$WORK/sub-$V-$Q.txt"
        timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -V "$V" -q "$Q" -u bob -P bob-pw \
            -i "sub-$V-$Q" -t "chat/#" -C 2 -v -d > "$OUT" &
        SUB=$!
        subscribed "$OUT"
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

# IM with nothing but mosquitto clients: a DM, the sender stamped in the topic.
timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -i bob-inbox -t 'inbox/bob/#' -C 1 -v -d > "$WORK/dm.txt" &
SUB=$!
subscribed "$WORK/dm.txt"
mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t dm/bob -m 'hi bob' -q 1
wait "$SUB" || fail "DM not delivered"
grep -qx 'inbox/bob/dm/alice hi bob' "$WORK/dm.txt" || fail "DM: $(cat "$WORK/dm.txt")"
echo "ok mosquitto DM alice -> bob"

# A persistent device (-c, fixed client id) catches up on what arrived while it was away.
timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -i bob-phone -c -q 1 -t 'inbox/bob/#' -C 1 -d > "$WORK/phone.txt" &
SUB=$!
subscribed "$WORK/phone.txt"
mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t dm/bob -m 'first' -q 1
wait "$SUB" || fail "persistent device: first message"
mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t dm/bob -m 'while away' -q 1
GOT=$(timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -i bob-phone -c -q 1 -t 'inbox/bob/#' -C 1 -v)
[ "$GOT" = "inbox/bob/dm/alice while away" ] || fail "persistent device catch-up: '$GOT'"
echo "ok mosquitto persistent device catches up"

# Someone else's mailbox is refused (SUBACK failure: mosquitto_sub reports it).
for V in mqttv311 mqttv5; do
    timeout 5 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V "$V" -u alice -P alice-pw -t 'inbox/bob/#' -C 1 -W 2 \
        > "$WORK/deny.txt" 2>&1 || true
    grep -q "denied" "$WORK/deny.txt" || fail "alice subscribed to bob's mailbox ($V): $(cat "$WORK/deny.txt")"
done
echo "ok mosquitto: subscribing to another mailbox is refused"

# The API: request on api/..., answer in the caller's mailbox.
timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -i alice-api -t 'inbox/alice/api/#' -C 1 -d > "$WORK/api.txt" &
SUB=$!
subscribed "$WORK/api.txt"
mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t api/account.whoami -m '{"id":"1"}' -q 1
wait "$SUB" || fail "no API answer"
grep -q '"user":"alice"' "$WORK/api.txt" || fail "whoami: $(cat "$WORK/api.txt")"
echo "ok mosquitto API request/response"

# MQTT 5 request/response in one connection with mosquitto_rr.
if command -v mosquitto_rr >/dev/null; then
    GOT=$(timeout 10 mosquitto_rr -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -t api/account.whoami \
        -e inbox/bob/rr/1 -m '{"id":"rr"}' -W 5)
    echo "$GOT" | grep -q '"user":"bob"' || fail "mosquitto_rr: $GOT"
    echo "ok mosquitto_rr (MQTT 5 Response Topic)"
fi

# A file, as docs/protocol.md (Files) tells any client to send one: announce, a chunk,
# finish; bob gets the file message and fetches the chunk back.
if command -v mosquitto_rr >/dev/null; then
    RR=(timeout 10 mosquitto_rr -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -W 5)
    SHA=$(printf hello | sha256sum | cut -d' ' -f1)
    START=$("${RR[@]}" -t api/files.start -e inbox/alice/rr/f1 \
        -m "{\"name\":\"a.txt\",\"size\":5,\"sha256\":\"$SHA\",\"user\":\"bob\"}")
    FILE=$(echo "$START" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["file"])') \
        || fail "files.start: $START"
    timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -i bob-files \
        -t inbox/bob/dm/alice -t "inbox/bob/file/#" -C 2 -v -d > "$WORK/file.txt" &
    SUB=$!
    subscribed "$WORK/file.txt"
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -u alice -P alice-pw -t "files/$FILE/0" -m hello -q 1
    DONE=$("${RR[@]}" -t api/files.finish -e inbox/alice/rr/f2 -m "{\"file\":\"$FILE\"}")
    echo "$DONE" | grep -q '"ok":true' || fail "files.finish: $DONE"
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -u bob -P bob-pw -t api/files.fetch -m "{\"file\":\"$FILE\"}" -q 1
    wait "$SUB" || fail "no file message or chunk: $(cat "$WORK/file.txt")"
    grep -q "\"type\":\"file\"" "$WORK/file.txt" || fail "file message: $(cat "$WORK/file.txt")"
    grep -q "^inbox/bob/file/$FILE/0 hello" "$WORK/file.txt" || fail "chunk: $(cat "$WORK/file.txt")"
    echo "ok mosquitto file: announce, chunk, finish, message, fetch"
fi

python3 .ci/paho_interop.py 127.0.0.1 "$PORT" || fail "paho interop"

# Registration without an account (registration open), then a login with it.
kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
printf '[im]\nregistration = "open"\n' >> "$WORK/config.toml"
start_broker
timeout 10 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -t register/r42 -C 1 -d > "$WORK/reg.txt" &
SUB=$!
subscribed "$WORK/reg.txt"
mosquitto_pub -h 127.0.0.1 -p "$PORT" -t api/account.register -m '{"user":"dave","password":"dave-pw","reply":"r42"}' -q 1
wait "$SUB" || fail "no registration answer"
grep -q '"ok":true' "$WORK/reg.txt" || fail "register: $(cat "$WORK/reg.txt")"
# The wrong-password checks above locked 127.0.0.1 for a moment, and the restart
# kept that lock (the throttle outlives restarts): retry while it lasts.
for attempt in $(seq 20); do
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -u dave -P dave-pw -t dm/alice -m 'hello, I am new' -q 1 2>/dev/null && break
    [ "$attempt" = 20 ] && fail "dave cannot log in"
    sleep 0.5
done
echo "ok mosquitto registration"
echo "interop passed"
