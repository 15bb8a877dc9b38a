#!/usr/bin/env python3
"""`make bench` for long recordings: zoo on ../shared's 190 s test recording one window after
another, with --vad and with --batch-size 8, float32 and int8, next to faster-whisper's own three
ways on the same file (sequential, vad_filter=True, BatchedInferencePipeline batch 8), float32 by
the reference's bench_long.py and int8 by this script's own child (the same calls), same threads.

Each run is a fresh process, so its peak RSS is its own. Two zoo times: the whole process (model
load and audio decoding included), and the transcription alone, as faster-whisper's is timed
(its transcribe() call, model loaded), which the speech bench (`benches/transcribe.rs`) measures
in-process and passes in with --zoo-rows; ratios are taken on the transcription alone.

usage: speech_long_bench.py SHARED PEER_PYTHON --threads N --reps R --out DIR [--zoo BIN]
                            [--zoo-rows ZOO_SPEECH.jsonl ...]
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
COMPUTE_TYPES = ["float32", "int8"]
# faster-whisper's mode in bench_long.py that does what each zoo mode does.
PEER_MODE = {"sequential": "a", "--vad": "b", "--batch-size 8": "c"}
PEER_NAME = {"a": "faster-whisper sequential", "b": "faster-whisper vad_filter=True",
             "c": "faster-whisper BatchedInferencePipeline batch 8"}


def fw_child(mode, compute_type, wav, threads):
    """faster-whisper on the recording as bench_long.py calls it, in `compute_type`; prints JSON."""
    import resource
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio
    model = WhisperModel("tiny.en", device="cpu", compute_type=compute_type, cpu_threads=threads,
                         local_files_only=True)
    audio = decode_audio(str(wav), sampling_rate=16000)
    common = dict(language="en", beam_size=1, temperature=0.0)
    start = time.perf_counter()
    if mode == "c":
        segments, _ = BatchedInferencePipeline(model).transcribe(audio, batch_size=8, **common)
    else:
        segments, _ = model.transcribe(audio, vad_filter=(mode == "b"), **common)
    text = " ".join(s.text.strip() for s in segments)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"transcribe_s": took, "peak_rss_mb": peak, "text": text}))


def fw_int8(peer_python, shared, out, threads, reps):
    """The int8 peer rows, in bench_long.py's shape: each run a fresh child process."""
    wav = shared / "assets/data/speech/long/long_dev_concat.wav"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    modes = {}
    for mode in "abc":
        runs = []
        for _ in range(reps):
            r = subprocess.run([peer_python, __file__, "--fw-child", mode, "int8", str(wav), str(threads)],
                               env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(r.stdout.splitlines()[-1]))
        hyp = out / f"hyp-fw-int8-long-{mode}.tsv"
        hyp.write_text(f"long_dev_concat\t{runs[0]['text']}\n", encoding="utf-8")
        modes[mode] = {"t_transcribe_s_median": statistics.median(r["transcribe_s"] for r in runs),
                       "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "wer": wer(shared, hyp)}
    return modes


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
    if len(sys.argv) > 1 and sys.argv[1] == "--fw-child":
        mode, compute_type, wav, threads = sys.argv[2:6]
        return fw_child(mode, compute_type, wav, int(threads))
    ap = argparse.ArgumentParser()
    ap.add_argument("shared", type=Path)
    ap.add_argument("peer_python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("target/bench"))
    ap.add_argument("--zoo", default="target/release/zoo")
    ap.add_argument("--zoo-rows", nargs="*", default=[], type=Path)
    a = ap.parse_args()
    wav = a.shared / "assets/data/speech/long/long_dev_concat.wav"
    a.out.mkdir(parents=True, exist_ok=True)
    # The transcription alone, from the in-process bench: (compute type, mode) -> seconds.
    alone = {}
    for path in a.zoo_rows:
        for line in path.read_text().splitlines():
            if line.startswith("{") and "long recording" in line:
                row = json.loads(line)
                alone[(row["compute_type"], row["input"].split(", ", 1)[1])] = row["transcribe_s_median"]

    rows = []
    for compute_type in COMPUTE_TYPES:
        for name, flags in ZOO_MODES:
            walls, peaks, first = [], [], None
            for _ in range(a.reps):
                wall, peak, result = run_zoo(a.zoo, wav, [*flags, "--compute-type", compute_type], a.threads, a.out)
                walls.append(wall)
                peaks.append(peak)
                first = first or result
            hyp = a.out / f"hyp-zoo-long-{compute_type}-{name.strip('-').replace(' ', '-')}.tsv"
            hyp.write_text(f"long_dev_concat\t{first['text']}\n", encoding="utf-8")
            rows.append({"task": "speech", "peer": "zoo", "model": first["model"], "compute_type": compute_type,
                         "input": f"long recording, {name}", "threads": a.threads,
                         "wall_s_median": round(statistics.median(walls), 3), "wall_s_all": [round(w, 3) for w in walls],
                         "transcribe_s_median": alone.get((compute_type, name)), "wer": wer(a.shared, hyp),
                         "peak_rss_mb": round(max(peaks), 1), "segments": len(first["segments"])})
            print(json.dumps(rows[-1]), flush=True)

    tool = a.shared / "assets/reference/vad/tools/bench_long.py"
    peer_out = a.out / "fw-long"
    subprocess.run([a.peer_python, str(tool), "--reps", str(a.reps), "--modes", "a,b,c", "--out", str(peer_out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peers = {"float32": json.loads((peer_out / "long_bench.json").read_text())["modes"],
             "int8": fw_int8(a.peer_python, a.shared, a.out, a.threads, a.reps)}
    for compute_type, modes in peers.items():
        for mode, v in modes.items():
            print(json.dumps({"task": "speech", "peer": PEER_NAME[mode], "compute_type": compute_type,
                              "input": f"long recording, mode {mode}", "threads": a.threads,
                              "transcribe_s_median": v["t_transcribe_s_median"], "wer": v["wer"],
                              "peak_rss_mb": v["peak_rss_mb_max"]}), flush=True)

    wer_pct = lambda text: text.split()[1]
    print(f"\n{'190 s recording, ' + str(a.threads) + ' threads':<28} {'zoo whole s':>11} {'zoo alone s':>11} "
          f"{'WER':>6} {'MB':>5}   {'faster-whisper s':>16} {'WER':>6} {'MB':>5} {'fw / zoo':>9}")
    for row in rows:
        name = row["input"].split(", ", 1)[1]
        p = peers[row["compute_type"]][PEER_MODE[name]]
        t = row["transcribe_s_median"]
        ratio = f"{p['t_transcribe_s_median'] / t:>8.2f}x" if t else f"{'-':>9}"
        print(f"{name + ', ' + row['compute_type']:<28} {row['wall_s_median']:>11.2f} {t or float('nan'):>11.2f} "
              f"{wer_pct(row['wer']):>6} {row['peak_rss_mb']:>5.0f}   {p['t_transcribe_s_median']:>16.2f} "
              f"{wer_pct(p['wer']):>6} {p['peak_rss_mb_max']:>5.0f} {ratio}")
    for compute_type in COMPUTE_TYPES:
        sequential, batched = alone.get((compute_type, "sequential")), alone.get((compute_type, "--batch-size 8"))
        if sequential and batched:
            print(f"zoo {compute_type}: --batch-size 8 against one window after another, transcription alone: "
                  f"{sequential / batched:.2f}x")


if __name__ == "__main__":
    main()
