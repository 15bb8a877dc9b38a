#!/usr/bin/env python3
"""Prints zoo's throughput next to a peer's, from the JSON lines both benchmarks print, matched on
batch size. Usage: bench_compare.py ZOO.jsonl PEER.jsonl"""
import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


zoo, peer = load(sys.argv[1]), load(sys.argv[2])
print(f"{'input':<26} {'batch':>5} {'threads':>7} {'zoo items/s':>12} {'peer items/s':>13} {'zoo/peer':>9}  peer")
for p in peer:
    if "items_per_s" not in p:
        continue
    match = [z for z in zoo if z.get("batch") == p.get("batch") and z.get("input") == p.get("input")]
    if not match:
        continue
    z = match[0]
    ratio = z["items_per_s"] / p["items_per_s"]
    print(f"{p['input']:<26} {p['batch']:>5} {p['threads']:>7} {z['items_per_s']:>12.1f} {p['items_per_s']:>13.1f} {ratio:>8.2f}x  {p['peer']}")
