#!/usr/bin/env python3
"""`make bench` for long recordings: zoo on ../shared's 190 s test recording one window after
another, with --vad and with --batch-size 8, next to faster-whisper's own three ways on the same
file (sequential, vad_filter=True, BatchedInferencePipeline batch 8; run here by the reference's
bench_long.py, float32, the same threads).

Each run is a fresh process, so its peak RSS is its own. zoo's time is the whole process (model
load and audio decoding included); faster-whisper's is its transcribe() call alone, as
bench_long.py times it (its model load is printed beside it), so the ratio favours the peer.

usage: speech_long_bench.py SHARED PEER_PYTHON --threads N --reps R --out DIR [--zoo BIN]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ZOO_MODES = [("sequential", []), ("--vad", ["--vad"]), ("--batch-size 8", ["--batch-size", "8"])]
# faster-whisper's mode in bench_long.py that does what each zoo mode does.
PEER_MODE = {"sequential": "a", "--vad": "b", "--batch-size 8": "c"}
PEER_NAME = {"a": "faster-whisper sequential", "b": "faster-whisper vad_filter=True",
             "c": "faster-whisper BatchedInferencePipeline batch 8"}


def wer(shared, hyp_path):
    r = subprocess.run([sys.executable, str(shared / "assets/reference/wer.py"),
                        str(shared / "assets/data/speech/long/manifest.tsv"), str(hyp_path), "--quiet"],
                       capture_output=True, text=True, check=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("TOTAL")][-1]
    return line.split("TOTAL", 1)[1].strip()


def run_zoo(zoo, wav, flags, threads, scratch):
    """One fresh process: its wall time, its own peak RSS (from the rusage of reaping it) and its
    JSON result."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    with open(scratch / "out.json", "w+") as out, open(scratch / "err.txt", "w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([zoo, "run", "asr", str(wav), "--json", "--offline", *flags], env=env,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"zoo {' '.join(flags)} failed: {err.read().strip()}")
        return wall, usage.ru_maxrss / 1024, json.loads(out.readline())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shared", type=Path)
    ap.add_argument("peer_python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("target/bench"))
    ap.add_argument("--zoo", default="target/release/zoo")
    a = ap.parse_args()
    wav = a.shared / "assets/data/speech/long/long_dev_concat.wav"
    a.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for name, flags in ZOO_MODES:
        walls, peaks, first = [], [], None
        for _ in range(a.reps):
            wall, peak, result = run_zoo(a.zoo, wav, flags, a.threads, a.out)
            walls.append(wall)
            peaks.append(peak)
            first = first or result
        hyp = a.out / f"hyp-zoo-long-{name.strip('-').replace(' ', '-')}.tsv"
        hyp.write_text(f"long_dev_concat\t{first['text']}\n", encoding="utf-8")
        rows.append({"task": "speech", "peer": "zoo", "model": first["model"], "input": f"long recording, {name}",
                     "threads": a.threads, "wall_s_median": round(statistics.median(walls), 3),
                     "wall_s_all": [round(w, 3) for w in walls], "wer": wer(a.shared, hyp),
                     "peak_rss_mb": round(max(peaks), 1), "segments": len(first["segments"])})
        print(json.dumps(rows[-1]), flush=True)

    tool = a.shared / "assets/reference/vad/tools/bench_long.py"
    peer_out = a.out / "fw-long"
    subprocess.run([a.peer_python, str(tool), "--reps", str(a.reps), "--modes", "a,b,c", "--out", str(peer_out)],
                   check=True, stdout=subprocess.DEVNULL)
    peer = json.loads((peer_out / "long_bench.json").read_text())["modes"]
    for mode, v in peer.items():
        print(json.dumps({"task": "speech", "peer": PEER_NAME[mode], "input": f"long recording, mode {mode}",
                          "threads": 2, "transcribe_s_median": v["t_transcribe_s_median"],
                          "model_load_s_median": v["t_model_load_s_median"], "wer": v["wer"],
                          "peak_rss_mb": v["peak_rss_mb_max"]}), flush=True)

    print(f"\n{'190 s recording, ' + str(a.threads) + ' threads':<34} {'zoo s (whole)':>13} {'zoo WER':>8} "
          f"{'zoo MB':>7}   {'peer s (transcribe)':>19} {'peer WER':>9} {'peer MB':>8} {'peer/zoo':>9}")
    sequential = rows[0]["wall_s_median"]
    for row in rows:
        name = row["input"].split(", ", 1)[1]
        p = peer[PEER_MODE[name]]
        wer_pct = lambda text: text.split()[1]
        print(f"{name:<34} {row['wall_s_median']:>13.2f} {wer_pct(row['wer']):>8} {row['peak_rss_mb']:>7.0f}   "
              f"{p['t_transcribe_s_median']:>19.2f} {wer_pct(p['wer']):>9} {p['peak_rss_mb_max']:>8.0f} "
              f"{p['t_transcribe_s_median'] / row['wall_s_median']:>8.2f}x")
    print(f"zoo --batch-size 8 against zoo one window after another: "
          f"{sequential / rows[2]['wall_s_median']:.2f}x")


if __name__ == "__main__":
    main()
