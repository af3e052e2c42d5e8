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
    targets = {"a": 0.8, "b": 0.6, "c": 0.2}

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = [s["name"] for s in scenarios]
    ratios = [s["ratio"] for s in scenarios]
    colors = ["#4c72b0" if s["baseline"] == "raw" else "#dd8452" for s in scenarios]
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
                   f"orange: × nginx {nginx.get('requestsPerSecond', 0):,.0f} req/s; red: target)", fontsize=9)
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
    fig.suptitle(f"Autonomous load run {result['date']}" + (" (smoke)" if result.get("smoke") else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"plot: {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
