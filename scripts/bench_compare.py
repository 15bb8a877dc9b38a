#!/usr/bin/env python3
"""Prints zoo's throughput and peak memory next to a peer's, from the JSON lines both benchmarks
print, matched on input and batch size (and, for style transfer, whose peer times several networks
at the same sizes, on the model too). For speech, items are seconds of audio (1 / real-time factor). Usage: bench_compare.py ZOO.jsonl PEER.jsonl"""
import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def same(z, p):
    if z.get("batch") != p.get("batch") or z.get("input") != p.get("input"):
        return False
    return p.get("task") != "style" or z.get("model") == p.get("model")


zoo, peer = load(sys.argv[1]), load(sys.argv[2])
print(f"{'model':<31} {'input':<26} {'batch':>5} {'threads':>7} {'zoo items/s':>12} {'peer items/s':>13} "
      f"{'zoo/peer':>9} {'zoo MB':>7} {'peer MB':>8}  peer")
for p in peer:
    # Speech peers report a real-time factor; its inverse is seconds of audio per second.
    if "items_per_s" not in p and p.get("rtf"):
        p["items_per_s"] = 1.0 / p["rtf"]
    if "items_per_s" not in p:
        continue
    # Every zoo row on the same input (an int8 model is timed against the peer's float one).
    for z in [z for z in zoo if same(z, p)]:
        ratio = z["items_per_s"] / p["items_per_s"]
        model = z.get("model", p.get("model", "")) + (f" {z['compute_type']}" if z.get("compute_type") else "")
        print(f"{model:<31} {p['input']:<26} {p['batch']:>5} {p['threads']:>7} "
              f"{z['items_per_s']:>12.1f} {p['items_per_s']:>13.1f} {ratio:>8.2f}x "
              f"{z.get('peak_rss_mb', float('nan')):>7.0f} {p.get('peak_rss_mb', float('nan')):>8.0f}  {p['peer']}"
              + (f", {p['compute_type']}" if p.get("compute_type") else ""))
