#!/usr/bin/python3
"""Plots a LoadRunner result: throughput as a share of its raw ceiling, and latency, per scenario.

    plot.py result.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    with open(source) as f:
        result = json.load(f)
    scenarios = [s for s in result["scenarios"] if s.get("ratio") is not None]
    timed = [s for s in result["scenarios"] if s.get("toHandlerStart")]
    targets = {"a": 0.8, "b": 0.6, "c": 0.2, "h": 0.8}

    fig, (left, right, tenants) = plt.subplots(1, 3, figsize=(20, 5.5), gridspec_kw={"width_ratios": [5, 5, 3]})
    names = [s["name"] for s in scenarios]
    ratios = [s["ratio"] for s in scenarios]
    colors = [{"raw": "#4c72b0", "raw-py": "#55a868"}.get(s["baseline"], "#dd8452") for s in scenarios]
    bars = left.bar(names, ratios, color=colors)
    for bar, s in zip(bars, scenarios):
        left.annotate(f"{s['rate']:,.0f}\n{'req' if s['baseline'] == 'nginx' else 'rec'}/s",
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        goal = targets.get(s["name"])
        if goal:
            left.hlines(goal, bar.get_x(), bar.get_x() + bar.get_width(), colors="red", linestyles="dashed")
    raw = result.get("raw") or {}
    rates = [raw.get("eventsPerSecond", 0)] + result.get("rawAgain", [])
    raw_text = (f"{min(rates):,.0f}–{max(rates):,.0f}/s,\nthe mean of its runs just before and after the scenario"
                if len(rates) > 1 else f"{rates[0]:,.0f}/s")
    nginx = result.get("nginx") or {}
    left.set_title(f"Throughput as a share of the ceiling measured in the same run\n"
                   f"(blue: × raw nats.c pipeline {raw_text};\n"
                   f"orange: × nginx {nginx.get('requestsPerSecond', 0):,.0f} req/s; green: × raw nats-py pipeline; red: target)", fontsize=9)
    left.set_ylabel("ratio")
    left.set_ylim(0, max([1.0] + ratios) * 1.15)

    labels = [s["name"] for s in timed]
    for key, marker in (("p50", "o"), ("p90", "s"), ("p99", "^"), ("p999", "v")):
        right.plot(labels, [max(0.01, s["toHandlerStart"][key]) for s in timed], marker=marker, label=f"{key} to handler start")
    right.plot(labels, [max(0.01, s["toOutput"]["p99"]) for s in timed], marker="x", linestyle="--", label="p99 to output PubAck")
    paced = [(s["name"], s["rawPacedP99"]) for s in timed if s.get("rawPacedP99") is not None]
    if paced:
        right.plot([n for n, _ in paced], [max(0.01, v) for _, v in paced], marker="*", markersize=12, linestyle="none",
                   color="black", label="p99 raw nats.c at b-half's load (PubAck → worker)")
    right.axhline(10, color="red", linestyle="dashed", linewidth=1, label="10 ms (b-half target)")
    right.set_yscale("log")
    right.set_ylabel("milliseconds from the 2xx (or the publish)")
    right.set_title("Latency (HdrHistogram)", fontsize=9)
    right.legend(fontsize=8)
    plot_tenants(tenants, {s["name"]: s for s in result["scenarios"]})
    fig.suptitle(f"Autonomous load run {result['date']}" + (" (smoke)" if result.get("smoke") else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"plot: {target}")


def plot_tenants(axis, by_name):
    """Scenario f: the light tenant's p99 alone and beside the flood (and f-limit's limited
    flood), with the same measured on the raw nats.c pipeline."""
    f = by_name.get("f")
    if not f or not f.get("lightP99"):
        axis.set_axis_off()
        return
    phases = ["alone", "flood", "flood at its limit"]
    ours = [f["lightP99"][0], f["lightP99"][1], (by_name.get("f-limit") or {}).get("lightP99", [0, 0])[1]]
    raw = f.get("rawTenants")
    raw_limited = (by_name.get("f-limit") or {}).get("rawTenants")
    width = 0.38
    positions = range(len(phases))
    bars = axis.bar([x - width / 2 for x in positions], ours, width, color="#4c72b0", label="Autonomous: request p99 (2xx)")
    for bar, value in zip(bars, ours):
        if value > 0:
            axis.annotate(f"{value:.1f} ms\n{value / max(0.001, ours[0]):.1f} ×", (bar.get_x() + bar.get_width() / 2, value),
                          ha="center", va="bottom", fontsize=8)
    if raw:
        # Each raw run's multiple is of its own p99 alone.
        pairs = [(raw["lightP99Alone"], raw["lightP99Alone"]), (raw["lightP99Flood"], raw["lightP99Alone"])]
        if raw_limited:
            pairs.append((raw_limited["lightP99Flood"], raw_limited["lightP99Alone"]))
        raw_bars = axis.bar([x + width / 2 for x in positions[:len(pairs)]], [v for v, _ in pairs], width, color="#555555",
                            label="raw nats.c: PubAck p99 (the third: flood paced at the limit)")
        for bar, (value, alone) in zip(raw_bars, pairs):
            axis.annotate(f"{value:.1f} ms\n{value / max(0.001, alone):.1f} ×", (bar.get_x() + bar.get_width() / 2, value),
                          ha="center", va="bottom", fontsize=8)
    axis.axhline(2 * ours[0], color="red", linestyle="dashed", linewidth=1, label="2 × Autonomous alone (target)")
    axis.set_xticks(list(positions), phases, fontsize=8)
    axis.set_ylabel("ms")
    axis.set_ylim(0, max(ours + ([raw["lightP99Flood"]] if raw else [])) * 1.3)
    axis.set_title("f: the light tenant (50 req/s) beside a flooding one", fontsize=9)
    axis.legend(fontsize=8)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
