"""zoo.ray on a real local Ray cluster, against what a serial `zoo run --json` prints.

Run by tests/python_package.rs (see test_zoo.py for the environment it sets). The cluster is a
`ray start --head` on 127.0.0.1 in a session of its own, stopped (and any process of it that
outlives the stop killed) whatever happens.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

# Read when ray is imported: it keeps the driver on the loopback address too, where otherwise it
# looks for the head at the machine's network address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray")

import zoo.ray  # noqa: E402

ZOO = os.environ["ZOO_BIN"]
ASSETS = pathlib.Path(os.environ["ZOO_SHARED_ASSETS"])
IMAGES = sorted(str(p) for p in (ASSETS / "data" / "images" / "imagenet-dev").glob("*.JPEG"))
CLIPS = sorted(str(p) for p in (ASSETS / "data" / "speech" / "audio").glob("*.wav"))
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
REPORT = {}


def listeners():
    """(address, port) of every listening TCP socket on the machine."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel prints each 32-bit word in host order (little-endian here).
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 4 else socket.AF_INET6
            found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(directory):
    """PIDs whose command line names `directory` (every Ray process names its session's)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if directory.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on 127.0.0.1 with 3 CPUs and a 200 MiB object store."""
    # Short: Ray's socket paths live under it and Unix socket paths are at most 107 bytes.
    temp = tempfile.mkdtemp(prefix="zoo-ray-", dir="/tmp")
    port = free_port()
    before = listeners()
    env = dict(os.environ)
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
         "--disable-usage-stats", "--num-cpus=3", f"--object-store-memory={200 * 1024 * 1024}",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while ("127.0.0.1", port) not in listeners() and ("::ffff:127.0.0.1", port) not in listeners():
            assert head.poll() is None, head.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the Ray head did not listen within 120 s"
            time.sleep(0.5)
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield {"before": before, "port": port}
    finally:
        ray.shutdown()
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # Workers and stores that left the head's session still name its directory.
        deadline = time.monotonic() + 10
        while processes_under(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in processes_under(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        report_dir = os.environ.get("ZOO_REPORT_DIR")
        if report_dir and REPORT:
            pathlib.Path(report_dir, "ray.json").write_text(json.dumps(REPORT, indent=2) + "\n")


def serial_cli(task, inputs, threads, *options):
    """`zoo run TASK INPUTS --json --threads N`: its objects, wall time and peak RSS (MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen([ZOO, "run", task, *inputs, "--json", "--threads", str(threads), *options],
                                 stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(1200, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        assert child.returncode in (0, 1), err.read().decode(errors="replace")
        results = [json.loads(line) for line in out.read().decode().splitlines()]
    return results, seconds, round(usage.ru_maxrss / 1024, 1)


def bare_actor_mb():
    """Peak RSS of a Ray actor with zoo imported and no pipeline: a worker before its model."""

    # Defined here so that Ray ships it by value: workers cannot import this test module.
    class Bare:
        def __call__(self, batch):
            import resource

            import zoo  # noqa: F401

            return {"rss": [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024] * len(batch["x"])}

    rows = ray.data.from_items([{"x": 0}]).map_batches(Bare, concurrency=1, num_cpus=1).take_all()
    return round(rows[0]["rss"], 1)


def close(a, b, path="result"):
    """Equal, with floats within 2e-4: actors batch differently from one process."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{path}: {a!r} != {b!r}"
        assert abs(a - b) <= 2e-4, f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def check_workers(rows, what):
    """At least 2 worker processes did the work, each with one pipeline loaded once."""
    workers = {}
    for row in rows:
        worker = json.loads(row["worker"])
        workers.setdefault(worker["pid"], set()).add(worker["load"])
        assert worker["loads"] == 1, f"{what}: process {worker['pid']} loaded {worker['loads']} pipelines"
    assert len(workers) >= 2, f"{what}: all {len(rows)} rows were answered by process(es) {sorted(workers)}"
    assert all(len(loads) == 1 for loads in workers.values()), workers
    peak, ready = {}, []
    for row in rows:
        worker = json.loads(row["worker"])
        peak[worker["pid"]] = max(peak.get(worker["pid"], 0), worker["peak_rss_mb"])
        ready.append(worker["loaded_at"])
    # The peak memory of each actor, and when the first one was ready to work.
    return sorted(peak.values()), min(ready)


def measured(inputs, times, cli_seconds, cli_mb, actor_peaks_mb):
    """The figures of a Ray job (started, first actor ready, ended: Unix times) next to zoo run's."""
    started, ready, ended = times
    return {
        "inputs": inputs, "ray_2_actors_1_thread_s": round(ended - started, 2),
        "ray_until_first_actor_ready_s": round(ready - started, 2),
        "ray_per_s": round(inputs / (ended - started), 2), "ray_per_s_once_ready": round(inputs / (ended - ready), 2),
        "zoo_run_2_threads_s": round(cli_seconds, 2), "zoo_run_per_s": round(inputs / cli_seconds, 2),
        "actor_peak_rss_mb": actor_peaks_mb, "zoo_run_peak_rss_mb": cli_mb,
    }


def test_images_on_two_actors_are_the_serial_clis(cluster, tmp_path):
    assert len(IMAGES) >= 100, f"the dev images are missing from {ASSETS}"
    # A file that is not a photo: its row gets the CLI's error object, the others go on.
    bad = tmp_path / "not-a-photo.JPEG"
    bad.write_text("a shopping list\n")
    inputs = IMAGES + [str(bad)]
    expected, _, _ = serial_cli("image-classification", inputs, 1, "--top-k", "3")
    assert len(expected) == len(inputs) and "error" in expected[-1]

    started_at = time.time()
    ds = ray.data.from_items([{"path": p} for p in inputs])
    rows = zoo.ray.map_batches(ds, "image-classification", column="path", concurrency=2, top_k=3,
                               worker_column="worker").take_all()
    ended_at = time.time()

    assert sorted(row["path"] for row in rows) == sorted(inputs), "every input answered exactly once"
    by_input = {}
    for row in rows:
        result = json.loads(row["zoo"])
        assert result["input"] == row["path"]
        by_input[result["input"]] = result
    for want in expected:
        close(by_input[want["input"]], want, want["input"])
    peaks, ready_at = check_workers(rows, "images")

    _, cli_seconds, cli_mb = serial_cli("image-classification", inputs, 2, "--top-k", "3")
    REPORT["bare_actor_rss_mb"] = bare_actor_mb()
    REPORT["images"] = measured(len(inputs), (started_at, ready_at, ended_at), cli_seconds, cli_mb, peaks)


def test_speech_bytes_on_two_actors_are_the_serial_clis(cluster):
    assert len(CLIPS) >= 20, f"the dev speech clips are missing from {ASSETS}"
    expected, _, _ = serial_cli("speech-recognition", CLIPS, 1)

    started_at = time.time()
    # The files' bytes, as a dataset of recordings in a bucket would hold them, named by path.
    ds = ray.data.read_binary_files(CLIPS, include_paths=True)
    rows = zoo.ray.map_batches(ds, "speech-recognition", column="bytes", name_column="path", concurrency=2,
                               batch_size=2, worker_column="worker").take_all()
    ended_at = time.time()

    assert sorted(os.path.basename(row["path"]) for row in rows) == sorted(map(os.path.basename, CLIPS))
    by_name = {}
    for row in rows:
        result = json.loads(row["zoo"])
        assert result["input"] == row["path"]
        by_name[os.path.basename(result.pop("input"))] = result
    for want in expected:
        close(by_name[os.path.basename(want.pop("input"))], want, want.get("text", ""))
    peaks, ready_at = check_workers(rows, "speech")

    _, cli_seconds, cli_mb = serial_cli("speech-recognition", CLIPS, 2)
    REPORT["speech"] = measured(len(CLIPS), (started_at, ready_at, ended_at), cli_seconds, cli_mb, peaks)


def test_the_deploy_example_writes_what_zoo_run_prints_for_the_folder(cluster, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in IMAGES[:12]:
        (folder / os.path.basename(photo)).symlink_to(photo)
    (folder / "not-a-photo.jpg").write_text("a shopping list\n")
    (folder / "notes.txt").write_text("not an image file: the folder's listing skips it\n")
    expected, _, _ = serial_cli("image-classification", [str(folder)], 1, "--top-k", "3")
    assert len(expected) == 13

    script = pathlib.Path(__file__).resolve().parents[3] / "deploy" / "ray" / "zoo_batch.py"
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{cluster['port']}")
    for output in (tmp_path / "labels.jsonl", tmp_path / "labels.parquet"):
        run = subprocess.run([sys.executable, str(script), "classify", str(folder), str(output), "--top-k", "3"],
                             capture_output=True, text=True, timeout=600, env=env)
        # One input failed, so the exit code says so, as zoo run's does.
        assert run.returncode == 1, run.stderr
        assert "1 input(s) failed" in run.stderr.splitlines()[-1], run.stderr
        if output.suffix == ".jsonl":
            lines = output.read_text().splitlines()
        else:
            import pyarrow.parquet

            lines = sorted(pyarrow.parquet.read_table(output).column("zoo").to_pylist(),
                           key=lambda line: json.loads(line)["input"])
        got = [json.loads(line) for line in lines]
        assert [g["input"] for g in got] == [e["input"] for e in expected], output.name
        for g, e in zip(got, expected):
            close(g, e, f"{output.name}: {e['input']}")


def test_nothing_listened_beyond_loopback(cluster):
    new = listeners() - cluster["before"]
    assert any(port == cluster["port"] for _, port in new), f"the head's port is not among {sorted(new)}"
    outside = sorted((address, port) for address, port in new if address not in LOOPBACK)
    assert not outside, f"Ray listened beyond 127.0.0.1: {outside}"


def test_usage_errors_fail_in_the_driver(cluster):
    ds = ray.data.from_items([{"text": "x"}])
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        zoo.ray.map_batches(ds, "nope", column="text")
    with pytest.raises(ValueError, match="unknown option 'topk' for task 'image-classification'"):
        zoo.ray.map_batches(ds, "classify", column="text", topk=3)
    # The driver only plans: the pipelines live in the actors.
    assert zoo.ray._loads == 0
