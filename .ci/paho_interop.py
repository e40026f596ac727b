"""Interop with paho-mqtt (2.x): MQTT 3.1.1 and 5, QoS 0/1/2, good and bad credentials."""
import queue
import sys
import time

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1], int(sys.argv[2])
TIMEOUT = 10


def client(name, protocol, user, password):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    c.username_pw_set(user, password)
    c.connected = queue.Queue()
    c.messages = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: cl.connected.put(rc)
    c.on_message = lambda cl, ud, msg: cl.messages.put(msg)
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    return c


def connect_code(c):
    return c.connected.get(timeout=TIMEOUT)


for protocol, label in [(mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")]:
    for qos in (0, 1, 2):
        sub = client(f"paho-sub-{label}-{qos}", protocol, "bob", "bob-pw")
        assert not connect_code(sub).is_failure, f"bob refused ({label})"
        subscribed = queue.Queue()
        sub.on_subscribe = lambda cl, ud, mid, codes, props=None: subscribed.put(codes)
        sub.subscribe("paho/#", qos=qos)
        codes = subscribed.get(timeout=TIMEOUT)
        assert not codes[0].is_failure and codes[0].value == qos, f"granted {codes} ({label} q{qos})"
        pub = client(f"paho-pub-{label}-{qos}", protocol, "alice", "alice-pw")
        assert not connect_code(pub).is_failure
        info = pub.publish("paho/x", f"hi {label} {qos}".encode(), qos=qos)
        info.wait_for_publish(timeout=TIMEOUT)
        msg = sub.messages.get(timeout=TIMEOUT)
        assert msg.topic == "paho/x" and msg.payload == f"hi {label} {qos}".encode(), msg.payload
        assert msg.qos == qos, (msg.qos, qos)
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
        print(f"ok paho {label} QoS {qos}")

    bad = client(f"paho-bad-{label}", protocol, "alice", "wrong")
    rc = connect_code(bad)
    bad.loop_stop()
    assert rc.is_failure, f"wrong password accepted ({label})"
    # paho reports a 3.1.1 CONNACK return code 5 as the MQTT 5 code 0x87 (not authorized).
    expected = 0x87 if protocol == mqtt.MQTTv311 else 0x86
    assert rc.value == expected, f"refusal code {rc.value:#x} ({label})"
    print(f"ok paho {label} refuses a wrong password with {rc.value:#x}")

print("paho interop passed")
