"""Peer for `make bench`: onnxruntime CPU on FastestDet's ONNX export (the authors' own file, in
../shared/assets/models/detection), timed as ../shared/bench's peers time theirs: session.run only,
on the exact 352x352 input of the reference (reference/detection/inputs_352/dog.352.area.png, as BGR
/ 255), in a fresh process per thread count. ../shared/bench has no detection peer; this one uses its
helpers (emit, bench_loop, run_isolated), so the JSON lines have the same fields.

usage: python detection_ort.py SHARED_BENCH_DIR [--threads 1,2] [--min-time 5]
"""
import argparse, os, sys


def one(a):
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    from common import emit, bench_loop
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads; so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    rgb = np.asarray(Image.open(a.input).convert("RGB"), np.float32)
    x = (rgb[:, :, ::-1].transpose(2, 0, 1)[None] / 255.0).astype(np.float32).copy()
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x})[0]
    assert out.shape == (1, 85, 22, 22) and np.isfinite(out).all(), out.shape
    n, wall, mon = bench_loop(lambda: sess.run(None, {name: x}), min_time=a.min_time, max_time=a.max_time)
    emit(task="detection", peer=f"onnxruntime {ort.__version__}", model="fastestdet", input="352x352", batch=1,
         threads=a.threads, iters=n, wall_s=round(wall, 3), items_per_s=round(n / wall, 3),
         ms_per_item=round(1000 * wall / n, 3), **mon)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=5.0)
    ap.add_argument("--max-time", type=float, default=60.0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.bench_dir))
    assets = os.path.join(os.path.dirname(os.path.abspath(a.bench_dir)), "assets")
    a.onnx = a.onnx or os.path.join(assets, "models/detection/FastestDet.onnx")
    a.input = a.input or os.path.join(assets, "reference/detection/inputs_352/dog.352.area.png")
    if a.one:
        a.threads = int(a.threads)
        return one(a)
    from common import run_isolated
    base = [a.bench_dir, "--onnx", a.onnx, "--input", a.input, "--min-time", str(a.min_time),
            "--max-time", str(a.max_time), "--one"]
    run_isolated(os.path.abspath(__file__), [base + ["--threads", t] for t in a.threads.split(",")])


if __name__ == "__main__":
    main()
