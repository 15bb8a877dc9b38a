#!/usr/bin/env python3
"""`zoo serve` under load, next to `zoo run` on the same inputs and threads.

For each task (image-classification: one image per multipart request; fake-news: one tweet per
JSON request) and each client level C, C threads with a persistent connection each send the
level's requests, cycling over the inputs. Prints one JSON object per line (throughput, p50/p99
latency, errors, the server's peak memory, the mean batch the server ran, the CLI's throughput and
the ratio to it), writes them to OUT/serve.jsonl and a table on stderr. The CLI baseline is timed
end to end and with the model load taken out (the all-inputs run minus a one-input run).

Standard library only. Usage (from the repository root, with the test assets' env for the text
encoder): eval "$(../shared/bin/test-assets --env)" && python3 scripts/bench_serve.py
"""
import argparse
import concurrent.futures
import csv
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "image-classification"
TEXT = "fake-news"
HOST = "127.0.0.1"


def log(message):
    print(f"bench_serve: {message}", file=sys.stderr, flush=True)


def kill_group(proc, sig=signal.SIGKILL):
    """Signals the child's process group (each child here leads its own)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# The CLI baseline


def run_cli(cmd, timeout):
    """Runs `cmd` to its end (killed past `timeout`): seconds, stdout lines, peak RSS (MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(timeout, kill_group, (proc,))
        timer.start()
        try:
            # wait4 rather than wait: its rusage is this child's own peak memory.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            kill_group(proc)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        out.seek(0)
        lines = [line for line in out.read().decode("utf-8", "replace").splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: " + " | ".join(tail))
        return seconds, lines, usage.ru_maxrss / 1024.0


def cli_baseline(task, cmd_all, cmd_one, n, threads, timeout):
    """Times the one-input run first (it also warms the page cache), then the all-inputs run."""
    one_s, _, _ = run_cli(cmd_one, timeout)
    all_s, lines, peak_mb = run_cli(cmd_all, timeout)
    failed = sum(1 for line in lines if '"error"' in line)
    if len(lines) != n:
        raise RuntimeError(f"zoo run {task}: {len(lines)} JSON lines for {n} inputs")
    steady = all_s - one_s
    row = {
        "bench": "serve-cli", "task": task, "inputs": n, "threads": threads,
        "wall_s": round(all_s, 3), "wall_one_s": round(one_s, 3),
        "throughput_e2e": round(n / all_s, 2),
        # The model load (and the first input) taken out: the other n - 1 inputs' rate.
        "throughput": round((n - 1) / steady, 2) if steady > 0 and n > 1 else None,
        "errors": failed, "peak_rss_mb": round(peak_mb, 1),
    }
    return row


# ---------------------------------------------------------------------------------------------
# The server


class Server:
    """`zoo serve` as a child in its own process group; its stderr is drained into a log."""

    def __init__(self, cmd, log_path):
        self.log = open(log_path, "w")
        self.tail = []
        self.port = None
        self.port_seen = threading.Event()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, text=True, errors="replace",
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            self.tail = (self.tail + [line.rstrip()])[-20:]
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match and self.port is None:
                self.port = int(match.group(1))
                self.port_seen.set()
        self.port_seen.set()  # the stream ended: wake whoever waits for the port

    def wait_port(self, timeout):
        self.port_seen.wait(timeout)
        if self.port is None:
            raise RuntimeError("the server printed no 'listening on' line: " + " | ".join(self.tail[-5:]))
        return self.port

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise RuntimeError(f"the server exited {self.proc.returncode}: " + " | ".join(self.tail[-5:]))
            try:
                status, body = http_get(self.port, "/health", timeout=5)
                if status == 200:
                    return json.loads(body)
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"/health did not answer 200 within {timeout:.0f} s: " + " | ".join(self.tail[-5:]))

    def memory_mb(self):
        """(VmHWM, VmRSS) in MB from /proc: the peak since the server started, and now."""
        found = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        found[key] = int(value.split()[0]) / 1024.0
        except OSError:
            pass
        return found.get("VmHWM"), found.get("VmRSS")

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; the exit status and the seconds it took to stop."""
        start = time.monotonic()
        try:
            if self.proc.poll() is None:
                kill_group(self.proc, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    log("the server did not stop within 10 s of SIGTERM; SIGKILL")
                    kill_group(self.proc, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            self.reader.join(5)
            self.log.close()
        return self.proc.returncode, time.monotonic() - start


def http_get(port, path, timeout=10):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def batch_stats(port):
    """Per model label: (sum, count) of zoo_batch_size from /metrics."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return {}
    stats = {}
    for line in body.decode("utf-8", "replace").splitlines():
        match = re.match(r"zoo_batch_size_(sum|count)\{([^}]*)\}\s+(\S+)", line)
        if not match:
            continue
        model = re.search(r'model="([^"]*)"', match.group(2))
        if model:
            entry = stats.setdefault(model.group(1), [0.0, 0.0])
            entry[0 if match.group(1) == "sum" else 1] = float(match.group(3))
    return stats


# ---------------------------------------------------------------------------------------------
# The load


def multipart(name, data):
    boundary = "zoo-bench-" + uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def good_body(data):
    """A 200 whose body is {"results": [one result without an error]}."""
    try:
        results = json.loads(data).get("results")
    except (ValueError, AttributeError):
        return False
    return isinstance(results, list) and len(results) == 1 and "error" not in results[0]


def load_level(port, path, requests, clients, count, max_seconds, timeout):
    """`clients` threads send `count` requests in all (request i is requests[i % len]), none
    started after `max_seconds`. Returns the records (latency s, status, good) and the wall time."""
    lock = threading.Lock()
    taken = [0]
    records = []
    deadline = time.monotonic() + max_seconds
    stop = threading.Event()  # set when the main thread is interrupted

    def client():
        conn = None
        mine = []
        try:
            while True:
                with lock:
                    if taken[0] >= count or time.monotonic() >= deadline or stop.is_set():
                        break
                    index = taken[0]
                    taken[0] += 1
                body, headers = requests[index % len(requests)]
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
                start = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                    if resp.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException):
                    status, data = 0, b""  # 0: the connection failed or timed out
                    conn.close()
                    conn = None
                latency = time.perf_counter() - start
                mine.append((latency, status, status == 200 and good_body(data)))
        finally:
            if conn is not None:
                conn.close()
            with lock:
                records.extend(mine)

    start = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=clients)
    try:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    except BaseException:
        stop.set()  # the clients finish the request they are in and stop
        raise
    finally:
        pool.shutdown(wait=True)
    return records, time.perf_counter() - start


def percentile_ms(latencies, q):
    if not latencies:
        return None
    if len(latencies) == 1:
        return round(latencies[0] * 1000, 1)
    return round(statistics.quantiles(latencies, n=100, method="inclusive")[q - 1] * 1000, 1)


def bench_task(server, task, model, requests, levels, count, args, cli_row):
    path = f"/v1/run/{task}"
    rows = []
    for clients in levels:
        before = batch_stats(server.port).get(model, [0.0, 0.0])
        cpu = time.process_time()
        records, wall = load_level(server.port, path, requests, clients, count, args.max_seconds, args.timeout)
        client_cpu = time.process_time() - cpu
        after = batch_stats(server.port).get(model, [0.0, 0.0])
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited {server.proc.returncode} during {task} x{clients}: "
                               + " | ".join(server.tail[-5:]))
        good = [r for r in records if r[2]]
        latencies = [r[0] for r in good]
        statuses = {}
        for _, status, ok in records:
            key = str(status) if ok or status != 200 else "200-bad-body"
            statuses[key] = statuses.get(key, 0) + 1
        peak_mb, rss_mb = server.memory_mb()
        batches = after[1] - before[1]
        throughput = len(good) / wall if wall > 0 else None
        cli = cli_row.get("throughput") if cli_row else None
        row = {
            "bench": "serve", "task": task, "model": model, "clients": clients, "threads": args.threads,
            "requests": len(records), "truncated": len(records) < count,
            "wall_s": round(wall, 3),
            "throughput": round(throughput, 2) if throughput else None,
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
            "errors": len(records) - len(good), "statuses": statuses,
            "mean_batch": round((after[0] - before[0]) / batches, 2) if batches > 0 else None,
            "server_peak_mb": round(peak_mb, 1) if peak_mb else None,
            "server_rss_mb": round(rss_mb, 1) if rss_mb else None,
            "client_cpu_s": round(client_cpu, 2),
            "cli_throughput": cli,
            "cli_throughput_e2e": cli_row.get("throughput_e2e") if cli_row else None,
            "ratio_to_cli": round(throughput / cli, 3) if throughput and cli else None,
        }
        rows.append(row)
        emit(row, args)
    return rows


def emit(row, args):
    line = json.dumps(row)
    print(line, flush=True)
    with open(args.jsonl, "a") as f:
        f.write(line + "\n")


def table(rows, cli_rows):
    out = [f"{'task':<22} {'clients':>7} {'reqs':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
           f"{'batch':>6} {'peak MB':>8} {'cli/s':>8} {'vs cli':>7}"]
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        out.append(f"{r['task']:<22} {r['clients']:>7} {r['requests']:>5} {f('throughput', '8.1f'):>8} "
                   f"{f('p50_ms', '8.1f'):>8} {f('p99_ms', '8.1f'):>8} {r['errors']:>6} {f('mean_batch', '6.2f'):>6} "
                   f"{f('server_peak_mb', '8.0f'):>8} {f('cli_throughput', '8.1f'):>8} "
                   f"{(format(r['ratio_to_cli'], '6.2f') + 'x') if r.get('ratio_to_cli') else '-':>7}")
    for c in cli_rows:
        out.append(f"cli {c['task']}: {c['inputs']} inputs in {c['wall_s']:.2f} s ({c['throughput_e2e']:.1f}/s end to end; "
                   f"{c['throughput'] or float('nan'):.1f}/s without the load, from a {c['wall_one_s']:.2f} s one-input run), "
                   f"peak {c['peak_rss_mb']:.0f} MB")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def main():
    shared = ROOT.parent / "shared" / "assets" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(ROOT / "target" / "release" / "zoo"))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--clients", default="1,8,64", help="concurrent client levels, comma-separated")
    parser.add_argument("--tasks", default=f"{IMAGE},{TEXT}", help="which of the two tasks to run")
    parser.add_argument("--image-requests", type=int, default=160, help="image requests per client level")
    parser.add_argument("--text-requests", type=int, default=300, help="text requests per client level")
    parser.add_argument("--requests", type=int, help="requests per client level, for both tasks")
    parser.add_argument("--max-seconds", type=float, default=120, help="no request starts later in a level")
    parser.add_argument("--timeout", type=float, default=90, help="one request's socket timeout, seconds")
    parser.add_argument("--cli-timeout", type=float, default=600, help="one `zoo run`'s time limit, seconds")
    parser.add_argument("--images", default=str(shared / "images" / "imagenet-dev"), help="a folder of *.JPEG")
    parser.add_argument("--tweets", default=str(shared / "fake-news" / "constraint_covid19" / "Constraint_Val.csv"))
    parser.add_argument("--n-tweets", type=int, default=300, help="the first N rows' `tweet`")
    parser.add_argument("--max-batch", type=int, help="passed to zoo serve --max-batch")
    parser.add_argument("--max-queue", type=int, help="passed to zoo serve --max-queue")
    parser.add_argument("--out", default=str(ROOT / "target" / "bench"))
    args = parser.parse_args()

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or any(t not in (IMAGE, TEXT) for t in tasks):
        parser.error(f"--tasks takes {IMAGE} and/or {TEXT}")
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if not levels or any(c < 1 or c > 1024 for c in levels):
        parser.error("--clients takes numbers from 1 to 1024")
    if args.requests is not None:
        args.image_requests = args.text_requests = args.requests
    if min(args.image_requests, args.text_requests) < 1 or args.threads < 1 or args.n_tweets < 1:
        parser.error("request counts, --threads and --n-tweets must be positive")
    if not os.access(args.zoo, os.X_OK):
        sys.exit(f"bench_serve: no zoo binary at {args.zoo} (make setup)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.jsonl = out / "serve.jsonl"
    args.jsonl.write_text("")

    images, tweets = [], []
    if IMAGE in tasks:
        images = sorted(Path(args.images).glob("*.JPEG"))
        if not images:
            sys.exit(f"bench_serve: no *.JPEG in {args.images}")
    if TEXT in tasks:
        if not Path(args.tweets).is_file():
            sys.exit(f"bench_serve: no tweets file {args.tweets}")
        with open(args.tweets, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if len(tweets) >= args.n_tweets:
                    break
                if row.get("tweet"):
                    tweets.append(row["tweet"])
        if not tweets:
            sys.exit(f"bench_serve: no `tweet` column rows in {args.tweets}")
        if not os.environ.get("HF_HUB_CACHE") and not os.environ.get("HF_HOME"):
            log('HF_HUB_CACHE is not set; fake-news needs its encoder cached (eval "$(../shared/bin/test-assets --env)")')

    threads = ["--threads", str(args.threads)]
    cli_rows = {}
    rows = []
    server = None
    failed = False
    try:
        log(f"CLI baseline, {args.threads} threads")
        if IMAGE in tasks:
            paths = [str(p) for p in images]
            base = [args.zoo, "run", IMAGE, "--json", *threads]
            cli_rows[IMAGE] = cli_baseline(IMAGE, base + paths, base + paths[:1], len(paths), args.threads,
                                           args.cli_timeout)
            emit(cli_rows[IMAGE], args)
        if TEXT in tasks:
            with tempfile.TemporaryDirectory() as tmp:
                def table_of(texts, name):
                    path = Path(tmp) / name
                    with open(path, "w", newline="", encoding="utf-8") as f:
                        writer = csv.writer(f)
                        writer.writerow(["tweet"])
                        writer.writerows([t] for t in texts)
                    return str(path)
                base = [args.zoo, "run", TEXT, "--text-column", "tweet", "--json", *threads]
                cli_rows[TEXT] = cli_baseline(TEXT, base + [table_of(tweets, "all.csv")],
                                              base + [table_of(tweets[:1], "one.csv")], len(tweets), args.threads,
                                              args.cli_timeout)
            emit(cli_rows[TEXT], args)

        cmd = [args.zoo, "serve", "--host", HOST, "--port", "0", *threads]
        for task in tasks:
            cmd += ["--task", task]
        if args.max_batch:
            cmd += ["--max-batch", str(args.max_batch)]
        if args.max_queue:
            cmd += ["--max-queue", str(args.max_queue)]
        log("starting " + " ".join(cmd[1:]))
        server = Server(cmd, out / "serve-stderr.log")
        server.wait_port(30)
        started = time.monotonic()
        health = server.wait_ready(120)
        log(f"ready on port {server.port} after {time.monotonic() - started:.1f} s")
        models = {m["task"]: m["model"] for m in health.get("models", [])}

        work = []
        if IMAGE in tasks:
            image_requests = [multipart(p.name, p.read_bytes()) for p in images]
            work.append((IMAGE, image_requests, args.image_requests))
        if TEXT in tasks:
            text_requests = [(json.dumps({"inputs": [t]}).encode(), {"Content-Type": "application/json"})
                             for t in tweets]
            work.append((TEXT, text_requests, args.text_requests))
        for task, requests, count in work:
            log(f"{task}: {count} requests per level, clients {levels}")
            rows += bench_task(server, task, models.get(task, task), requests, levels, count, args,
                               cli_rows.get(task))

        for task, model in models.items():
            total, batches = batch_stats(server.port).get(model, [0.0, 0.0])
            emit({"bench": "serve-metrics", "task": task, "model": model, "batches": int(batches),
                  "inputs": int(total), "mean_batch": round(total / batches, 2) if batches else None}, args)
    except Exception as e:  # reported, then the server is stopped all the same
        log(f"failed: {e}")
        failed = True
    finally:
        if server is not None:
            code, took = server.stop()
            log(f"server stopped: exit {code} after {took:.1f} s (log: {out / 'serve-stderr.log'})")
            failed = failed or code != 0
    print(table(rows, list(cli_rows.values())), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
