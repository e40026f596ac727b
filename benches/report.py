#!/usr/bin/env python3
"""Turns benches/compare.sh results (JSON lines) into docs/benchmarks.md and an SVG chart.

Medians per (scenario, broker) over the rounds, natterd/mosquitto ratios, the targets of
the benchmarks issue and whether they are met. Standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

# (scenario, metric, label, better, target kind, target value)
#   better: "higher" or "lower"; target kind: "ratio" (natterd/mosquitto) or "abs" (natterd alone)
TARGETS = [
    ("pairs-qos1-1k", "p99_us", "p99 latency at 1,000 msg/s (us)", "lower", "ratio_max", 1.0),
    ("pairs-qos1-20k", "p99_us", "p99 latency at 20,000 msg/s (us)", "lower", "ratio_max", 1.0),
    ("pairs-qos1-unpaced", "msgs_per_sec", "1:1 QoS 1 throughput, unpaced (msg/s)", "higher", "ratio_min", 1.0),
    ("pairs-qos1-unpaced", "p99_us", "p99 latency, unpaced (us)", "lower", None, None),
    ("group-100", "deliveries_per_sec", "group of 100, deliveries/s", "higher", "ratio_min", 2.0),
    ("fanin-50", "deliveries_per_sec", "50 publishers to 1 subscriber, deliveries/s", "higher", None, None),
    ("fanin-50", "lost", "fan-in: messages dropped by a full subscriber queue", "lower", None, None),
    ("connections", "rss_per_1000_kib", "broker RSS per 1,000 idle connections (KiB)", "lower", "abs_max", 2048),
    ("connections", "connects_per_sec", "connects/s (natterd: device tokens)", "higher", "abs_min", 10000),
    ("storm", "all_connected_secs", "reconnect storm: all connected after (s)", "lower", "abs_max", 5.0),
]

# natterd in one scenario against Mosquitto in another: (natterd scenario, mosquitto scenario, ...)
CROSS_TARGETS = [
    ("im:connections", "connections", "rss_per_1000_kib",
     "RSS per 1,000 connected IM users (natterd: own account, inbox subscribed, presence online; "
     "Mosquitto: a plain subscribed connection) (KiB)", "lower", "abs_max", 2048),
]

# IM path vs natterd's plain MQTT path: (IM scenario, plain scenario, metric, label, kind, target)
IM_TARGETS = [
    ("im:pairs-qos1-unpaced", "pairs-qos1-unpaced", "msgs_per_sec", "DM throughput (msg/s)", "cost_max", 2.0),
    ("im:pairs-qos1-1k", "pairs-qos1-1k", "p99_us", "DM p99 at 1,000 msg/s (us)", "cost_max", 2.0),
    ("im:group-100", "group-100", "deliveries_per_sec", "group of 100 through mailboxes, deliveries/s", "cost_max", 2.0),
]

# Durability: natterd's IM path with [store] durability sync (the im: scenarios) and
# relaxed (im-relaxed:) against Mosquitto's plain path, which stores nothing per message.
# (label, sync scenario, relaxed scenario, mosquitto scenario, metric, sync target, relaxed target)
#   targets: ("ratio_min"|"ratio_max", x) on natterd / mosquitto, or None
DURABILITY_TARGETS = [
    ("QoS 1 DM throughput, unpaced (msg/s)", "im:pairs-qos1-unpaced", "im-relaxed:pairs-qos1-unpaced",
     "pairs-qos1-unpaced", "msgs_per_sec", ("ratio_min", 3.0), ("ratio_min", 6.0)),
    ("QoS 1 DM p99 at 1,000 msg/s (us)", "im:pairs-qos1-1k", "im-relaxed:pairs-qos1-1k",
     "pairs-qos1-1k", "p99_us", ("ratio_max", 2.0), None),
    ("disk bytes written per stored DM (unpaced)", "im:pairs-qos1-unpaced", "im-relaxed:pairs-qos1-unpaced",
     "pairs-qos1-unpaced", "disk_bytes_per_msg", None, None),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool just leaves the field empty
        return ""


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "mosquitto": sh("mosquitto -h | head -1"),
        "commit": sh("git rev-parse --short HEAD"),
    }


def medians(rows):
    out = {}
    for r in rows:
        out.setdefault((r["name"], r["label"]), []).append(r)
    return out


def median_of(runs, metric):
    vals = [r[metric] for r in runs if metric in r and r[metric] is not None]
    return statistics.median(vals) if vals else None


def verdict(kind, target, nat, mos):
    if kind is None or nat is None:
        return "", ""
    if kind.startswith("ratio"):
        if not mos:
            return f"{'>=' if kind == 'ratio_min' else '<='} {target}x", "n/a"
        ratio = nat / mos
        ok = ratio >= target if kind == "ratio_min" else ratio <= target
        return f"{'>=' if kind == 'ratio_min' else '<='} {target}x", "met" if ok else "missed"
    ok = nat >= target if kind == "abs_min" else nat <= target
    return f"{'>=' if kind == 'abs_min' else '<='} {fmt(target)}", "met" if ok else "missed"


def svg_chart(groups, path):
    """Two panels of grouped bars (log scale): throughput and p99 latency per scenario."""
    panels = [
        ("Throughput (msg/s, deliveries/s for group and fan-in; log scale)", [
            ("pairs 1k", "pairs-qos1-1k", "msgs_per_sec"),
            ("pairs 20k", "pairs-qos1-20k", "msgs_per_sec"),
            ("pairs unpaced", "pairs-qos1-unpaced", "msgs_per_sec"),
            ("group 100", "group-100", "deliveries_per_sec"),
            ("fan-in 50", "fanin-50", "deliveries_per_sec"),
            ("connects/s", "connections", "connects_per_sec"),
        ]),
        ("p99 latency (us, lower is better; log scale)", [
            ("pairs 1k", "pairs-qos1-1k", "p99_us"),
            ("pairs 20k", "pairs-qos1-20k", "p99_us"),
            ("pairs unpaced", "pairs-qos1-unpaced", "p99_us"),
            ("group 100", "group-100", "p99_us"),
            ("fan-in 50", "fanin-50", "p99_us"),
        ]),
    ]
    import math

    width, panel_h, top = 900, 300, 40
    colors = {"natterd": "#2b6cb0", "mosquitto": "#c05621"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + len(panels) * (panel_h + 60)}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="20" y="22" font-size="15" font-weight="bold">natterd vs Mosquitto (medians)</text>']
    for i, (b, c) in enumerate(colors.items()):
        parts.append(f'<rect x="{560 + i * 120}" y="10" width="14" height="14" fill="{c}"/><text x="{580 + i * 120}" y="22">{b}</text>')
    for p, (title, bars) in enumerate(panels):
        y0 = top + p * (panel_h + 60)
        parts.append(f'<text x="20" y="{y0 + 20}" font-weight="bold">{title}</text>')
        vals = [median_of(groups.get((s, b), []), m) for _, s, m in bars for b in colors]
        vals = [v for v in vals if v]
        if not vals:
            continue
        lo, hi = math.log10(max(min(vals) / 2, 1)), math.log10(max(vals) * 2)
        base_y, plot_h = y0 + panel_h, panel_h - 50
        slot = (width - 80) / len(bars)
        for j, (label, s, m) in enumerate(bars):
            x = 60 + j * slot
            for k, b in enumerate(colors):
                v = median_of(groups.get((s, b), []), m)
                if not v:
                    continue
                h = plot_h * (math.log10(max(v, 1)) - lo) / (hi - lo)
                bx = x + 10 + k * (slot - 20) / 2
                bw = (slot - 30) / 2
                parts.append(f'<rect x="{bx:.1f}" y="{base_y - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colors[b]}"/>')
                parts.append(f'<text x="{bx + bw / 2:.1f}" y="{base_y - h - 4:.1f}" text-anchor="middle" font-size="10">{fmt(v)}</text>')
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{base_y + 16}" text-anchor="middle">{label}</text>')
        parts.append(f'<line x1="50" y1="{base_y}" x2="{width - 20}" y2="{base_y}" stroke="#333"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("markdown")
    ap.add_argument("svg")
    ap.add_argument("--command", default="bash benches/compare.sh")
    a = ap.parse_args()
    with open(a.results) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    groups = medians(rows)
    rounds = max((r.get("round", 1) for r in rows), default=0)
    m = machine()
    svg_chart(groups, a.svg)
    lines = [
        "# Benchmarks: natterd and Mosquitto, side by side",
        "",
        f"Generated by `benches/report.py` from `{a.command}` on {datetime.date.today().isoformat()}.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; shared and noisy, so absolute numbers drift: read the ratios.",
        f"- natterd commit {m['commit']} (release build); {m['mosquitto']}.",
        f"- {rounds} round(s), brokers alternating (A B, then B A), a fresh broker per run; broker pinned to CPU 0 and the",
        "  load generator (`natter-load`, one task per connection, batched writes) to CPU 1 with `taskset`.",
        "- natterd runs its default configuration: authentication on, every client logs in as its own account with a",
        "  device token, deny-by-default authorization with one operator rule opening `bench/#` for the plain-MQTT",
        "  scenarios; the IM scenarios below use Natter's own topics through the mailboxes. Its store (on disk) is set",
        "  up once and grows across runs (every IM message is journaled); `sync` runs after each run, so the next",
        "  one does not pay for the previous one's writeback.",
        "- Mosquitto: `persistence false`, `set_tcp_nodelay true`, anonymous clients (it has no token logins), default",
        "  queue of 1,000 messages per client like natterd's.",
        "- Unpaced runs keep at most `--window` messages per recipient between publish and delivery (end to end), so they",
        "  measure what the broker sustains rather than how fast its queues overflow.",
        "",
        "![throughput and p99 per scenario](benchmarks.svg)",
        "",
        "## Results (medians)",
        "",
        "| scenario | figure | natterd | mosquitto | natterd / mosquitto | target | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for scen, metric, label, better, kind, target in TARGETS:
        nat = median_of(groups.get((scen, "natterd"), []), metric)
        mos = median_of(groups.get((scen, "mosquitto"), []), metric)
        ratio = f"{nat / mos:.2f}x" if nat is not None and mos else "-"
        t, v = verdict(kind, target, nat, mos)
        lines.append(f"| {scen} | {label} | {fmt(nat)} | {fmt(mos)} | {ratio} | {t} | {v} |")
    for nat_s, mos_s, metric, label, better, kind, target in CROSS_TARGETS:
        nat = median_of(groups.get((nat_s, "natterd"), []), metric)
        mos = median_of(groups.get((mos_s, "mosquitto"), []), metric)
        ratio = f"{nat / mos:.2f}x" if nat is not None and mos else "-"
        t, v = verdict(kind, target, nat, mos)
        lines.append(f"| {nat_s} | {label} | {fmt(nat)} | {fmt(mos)} | {ratio} | {t} | {v} |")
    lines += [
        "",
        "Ratios are natterd divided by Mosquitto: above 1 is better for throughput, below 1 is better for latency and memory.",
        "",
        "Memory per 1,000 connections is what the second half of the connections added to the broker's resident",
        "memory, each reading taken once it has stopped moving (both brokers measured the same way). natterd runs",
        "these scenarios with `MIMALLOC_PURGE_DELAY=0`: its allocator then returns freed pages at once, so a reading",
        "counts what is in use rather than what the connect burst freed (with the default delay, pages freed by idle",
        "threads are returned late or never, and the readings wander by hundreds of KiB).",
        "",
        "## The IM path: authorization, mailbox and history writes, sender copies",
        "",
        "Natter's topics (`dm/{peer}` delivered to `inbox/{me}/dm/{from}`, `group/bench`) against natterd's own plain",
        "MQTT path in the same run. Every DM is authorized (user exists, not blocked), routed to the recipient's",
        "sessions with its `id`, `from` and `ts` properties (and to the sender's other devices, when connected),",
        "journaled once with its route (the writer stores what it routed once nothing new arrives, or at its batch",
        "bounds), appended to the recipient's and the sender's mailboxes (indexes written from memory by a",
        "low-priority thread), and only then acknowledged to the publisher: with `[store] durability = \"sync\"`",
        "(the default, and these rows) once the group it was stored with is flushed to disk.",
        "",
        "| figure | IM path | plain MQTT | cost (plain / IM) | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for im_s, plain_s, metric, label, kind, target in IM_TARGETS:
        im_v = median_of(groups.get((im_s, "natterd"), []), metric)
        plain_v = median_of(groups.get((plain_s, "natterd"), []), metric)
        cost = None
        if im_v and plain_v:
            cost = plain_v / im_v if metric != "p99_us" else im_v / plain_v
        verdict_text = ""
        if kind == "cost_max" and cost is not None:
            verdict_text = "met" if cost <= target else "missed"
        lines.append(
            f"| {label} | {fmt(im_v)} | {fmt(plain_v)} | {f'{cost:.2f}x' if cost else '-'} | "
            f"{f'<= {target}x' if kind else ''} | {verdict_text} |"
        )
    lines += [
        "",
        "## Durability: acknowledged on disk (sync) or from memory (relaxed)",
        "",
        "The IM DM rows with `[store] durability = \"sync\"` (a publish is acknowledged once its group is flushed to",
        "disk: one fsync per group) and `\"relaxed\"` (acknowledged from memory, written every 500 ms), against",
        "Mosquitto's plain path with `persistence false`, which stores nothing. Disk bytes are what natterd's process",
        "wrote to storage during the run (`/proc/PID/io`), per acknowledged DM.",
        "",
        "| figure | sync | relaxed | mosquitto | sync / mosquitto | relaxed / mosquitto | target (sync; relaxed) | |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, sync_s, relaxed_s, mos_s, metric, sync_t, relaxed_t in DURABILITY_TARGETS:
        sync_v = median_of(groups.get((sync_s, "natterd"), []), metric)
        relaxed_v = median_of(groups.get((relaxed_s, "natterd"), []), metric)
        mos_v = median_of(groups.get((mos_s, "mosquitto"), []), metric)
        if metric == "disk_bytes_per_msg":
            mos_v = None
        targets, verdicts = [], []
        for value, t in ((sync_v, sync_t), (relaxed_v, relaxed_t)):
            if t is None:
                targets.append("-")
                continue
            text, v = verdict(t[0], t[1], value, mos_v)
            targets.append(text)
            verdicts.append(v)
        ratio = lambda v: f"{v / mos_v:.2f}x" if v is not None and mos_v else "-"
        lines.append(
            f"| {label} | {fmt(sync_v)} | {fmt(relaxed_v)} | {fmt(mos_v)} | {ratio(sync_v)} | {ratio(relaxed_v)} | "
            f"{'; '.join(targets) if verdicts else ''} | {', '.join(verdicts)} |"
        )
    lines += [
        "",
        "In the 1,000 msg/s rows the ten pairs send in step, ten messages every 10 ms, so the p99 is the last of",
        "a burst of ten and grows with the broker's cost per message. These rows alone, with more rounds:",
        "`ONLY='^(pairs-qos1-unpaced|pairs-qos1-1k|im:pairs-qos1-unpaced|im:pairs-qos1-1k|im-relaxed:.*)$'",
        "REPORT=docs/benchmarks-durability.md ROUNDS=5 bash benches/compare.sh` (last result in that file).",
        "",
        "## Every run",
        "",
        "| round | scenario | broker | msg/s | deliveries/s | p50 us | p99 us | p999 us | lost | dup | connects/s | RSS/1000 KiB | gen CPU % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.get("round", 0), r["name"], r["label"])):
        g = r.get
        lines.append(
            f"| {g('round')} | {r['name']} | {r['label']} | {fmt(g('msgs_per_sec'))} | {fmt(g('deliveries_per_sec'))} | "
            f"{fmt(g('p50_us'))} | {fmt(g('p99_us'))} | {fmt(g('p999_us'))} | {fmt(g('lost'))} | {fmt(g('dup'))} | "
            f"{fmt(g('connects_per_sec'))} | {fmt(g('rss_per_1000_kib'))} | {fmt(g('gen_cpu_pct'))} |"
        )
    lines += [
        "",
        "A run whose generator CPU is near 100 % was limited by the generator, not the broker: discard it.",
        "",
        "## Reproduce",
        "",
        "```sh",
        a.command,
        "cargo bench -p natter-bench --bench micro    # criterion: codec, routing, authorization, token check",
        "```",
        "",
    ]
    with open(a.markdown, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
