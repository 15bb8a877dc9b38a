#!/usr/bin/env python3
"""Prints zoo's throughput and peak memory next to a peer's, from the JSON lines both benchmarks
print, matched on input and batch size (and, for style transfer, whose peer times several networks
at the same sizes, on the model too). For speech, items are seconds of audio (1 / real-time factor).

Where the files hold several rounds (`make bench-vision ROUNDS=n`: zoo, then the peer, n times,
each row tagged with its "round"), each zoo row is paired with the peer's row of the same kind and
round, and the table gives each side's median and the median of the rounds' ratios, with their
range: on a machine whose speed drifts, a ratio within one round compares like with like. Untagged
rows are numbered in the order they come. Usage: bench_compare.py ZOO.jsonl PEER.jsonl"""
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def same(z, p):
    if z.get("batch") != p.get("batch") or z.get("input") != p.get("input"):
        return False
    return p.get("task") != "style" or z.get("model") == p.get("model")


def peer_key(p):
    return (p.get("peer"), p.get("task"), p.get("model") if p.get("task") == "style" else None, p.get("input"),
            p.get("batch"), p.get("threads"), p.get("compute_type"), p.get("graphs"))


def zoo_model(z, p):
    return z.get("model", p.get("model", "")) + (f" {z['compute_type']}" if z.get("compute_type") else "")


def by_round(rows):
    """{round: row}, untagged rows numbered in order."""
    return {row.get("round", i + 1): row for i, row in enumerate(rows)}


def most(rows):
    known = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
    return max(known) if known else float("nan")


zoo, peer = load(sys.argv[1]), load(sys.argv[2])
for p in peer:
    # Speech peers report a real-time factor; its inverse is seconds of audio per second.
    if "items_per_s" not in p and p.get("rtf"):
        p["items_per_s"] = 1.0 / p["rtf"]
peer = [p for p in peer if "items_per_s" in p]

# Each kind of peer row, in the order first seen, with its rounds.
kinds = {}
for p in peer:
    kinds.setdefault(peer_key(p), []).append(p)

print(f"{'model':<31} {'input':<26} {'batch':>5} {'threads':>7} {'zoo items/s':>12} {'peer items/s':>13} "
      f"{'zoo/peer':>9} {'zoo MB':>7} {'peer MB':>8}  peer")
for rounds in kinds.values():
    p = rounds[0]
    # Every zoo model on the same input (an int8 model is timed against the peer's float one), its
    # rounds in order.
    models = {}
    for z in zoo:
        if same(z, p):
            models.setdefault((zoo_model(z, p), z.get("threads")), []).append(z)
    peer_rounds = by_round(rounds)
    for (model, _), zs in models.items():
        zoo_rounds = by_round(zs)
        both = [r for r in zoo_rounds if r in peer_rounds]
        if not both:
            continue
        if len(both) < max(len(zoo_rounds), len(peer_rounds)):
            print(f"bench_compare: {model} at {p['input']}, batch {p['batch']}: only rounds {both} have both rows",
                  file=sys.stderr)
        zs, qs = [zoo_rounds[r] for r in both], [peer_rounds[r] for r in both]
        n = len(both)
        zoo_rate = statistics.median(z["items_per_s"] for z in zs)
        peer_rate = statistics.median(q["items_per_s"] for q in qs)
        ratios = sorted(z["items_per_s"] / q["items_per_s"] for z, q in zip(zs, qs))
        spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f}x in {n} rounds)" if n > 1 else ""
        zoo_mb, peer_mb = most(zs), most(qs)
        print(f"{model:<31} {p['input']:<26} {p['batch']:>5} {p['threads']:>7} "
              f"{zoo_rate:>12.1f} {peer_rate:>13.1f} {statistics.median(ratios):>8.2f}x "
              f"{zoo_mb:>7.0f} {peer_mb:>8.0f}  {p['peer']}"
              + (f", {p['compute_type']}" if p.get("compute_type") else "") + spread)
