"""zoo over a Ray Data dataset: each actor of a pool loads its pipeline once and answers batches.

    >>> import ray, zoo.ray
    >>> photos = ray.data.from_items([{"path": p} for p in sorted(glob.glob("photos/*.jpg"))])
    >>> labelled = zoo.ray.map_batches(photos, "image-classification", column="path", top_k=3)
    >>> labelled.write_json("labels/")          # one row per photo, with a "zoo" column

The ``zoo`` column holds, for each row, the line ``zoo run TASK INPUT --json`` prints for it: a
JSON string (``json.loads`` it), failed inputs included as ``{"input", "model", "error"}`` objects
unless ``errors="raise"``. Install with ``pip install 'zoo[ray]'``.
"""

from __future__ import annotations

import json
import os
import resource
import time
import uuid
from typing import Any

import numpy as np

from . import Pipeline, ZooError, _option_name, _zoo

__all__ = ["map_batches"]

# Pipelines loaded in this process: one per actor, which the worker column lets a caller check.
_loads = 0


def map_batches(
    ds,
    task: str,
    *,
    column: str,
    model: str | None = None,
    concurrency: int = 2,
    threads: int = 1,
    num_cpus: float | None = None,
    batch_size: int = 16,
    errors: str = "return",
    output_column: str = "zoo",
    name_column: str | None = None,
    worker_column: str | None = None,
    offline: bool | None = None,
    **options: Any,
):
    """Runs ``task`` over ``ds[column]``; returns the dataset with ``output_column`` added.

    ``column`` holds paths (one file each), text for text tasks, a file's bytes (as
    ``ray.data.read_binary_files`` gives them), or decoded images (``ray.data.read_images``).
    ``name_column`` names bytes and images in the results (``"path"`` with
    ``include_paths=True``); paths name themselves.

    An actor pool of ``concurrency`` actors, each with ``num_cpus`` CPUs (default: ``threads``)
    running its pipeline on ``threads`` threads, so a machine's cores are shared by actors rather
    than by threads fighting inside each. ``model`` and ``options`` (``top_k=3``,
    ``language="de"``, ...) are ``zoo.pipeline``'s. ``errors="raise"`` fails the job on the first
    bad input instead of recording it. ``worker_column`` adds, per row, a JSON object with the
    worker's ``pid``, its pipeline's ``load`` id, ``loads`` (pipelines loaded by that process),
    ``load_s`` (seconds the load took), ``loaded_at`` (Unix time it ended) and ``peak_rss_mb``.
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    if concurrency < 1 or threads < 1:
        raise ValueError("concurrency and threads must be at least 1")
    # Fails here, in the driver, with the CLI's message, rather than in every actor.
    _zoo.check(task, [_option_name(name) for name in options])
    spec = dict(task=task, model=model, threads=threads, offline=offline, options=options)
    columns = dict(column=column, output=output_column, name=name_column, worker=worker_column, errors=errors)
    return ds.map_batches(
        _ZooActor,
        fn_constructor_args=(spec, columns),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=threads if num_cpus is None else num_cpus,
    )


class _ZooActor:
    """One Ray actor: its pipeline, loaded once, and the columns it reads and writes."""

    def __init__(self, spec, columns):
        global _loads
        spec = dict(spec)
        options = spec.pop("options")
        started = time.monotonic()
        self._pipeline = Pipeline(spec.pop("task"), spec.pop("model"), **spec, **options)
        self._load_s = time.monotonic() - started
        self._loaded_at = time.time()
        self._columns = columns
        self._load = uuid.uuid4().hex
        _loads += 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = self._columns
        values = list(batch[columns["column"]])
        names = None
        if columns["name"] is not None:
            names = [str(name) for name in batch[columns["name"]]]
        lines = self._answer(values, names)
        out = dict(batch)
        out[columns["output"]] = np.array(lines, dtype=object)
        if columns["worker"] is not None:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            worker = json.dumps({
                "pid": os.getpid(), "load": self._load, "loads": _loads, "load_s": round(self._load_s, 3),
                "loaded_at": self._loaded_at, "peak_rss_mb": round(peak_mb, 1),
            })
            out[columns["worker"]] = np.array([worker] * len(lines), dtype=object)
        return out

    def _answer(self, values, names):
        """One JSON line per row, in order; a row that cannot be run gets its error object."""
        try:
            lines = self._pipeline.json(values, names=names)
            if len(lines) == len(values):
                return self._checked(lines)
        except (ZooError, ValueError, TypeError):
            pass
        # A row failed before the model ran (a missing file, a folder, a wrong type): each row by
        # itself, so that the others are answered and the bad one says why.
        lines = []
        for i, value in enumerate(values):
            name = None if names is None else names[i]
            try:
                answer = self._pipeline.json([value], names=None if name is None else [name])
                if len(answer) != 1:
                    raise ZooError(f"{name or value}: a path in this column is one file, not {len(answer)} inputs")
                lines.extend(answer)
            except (ZooError, ValueError, TypeError) as e:
                if self._columns["errors"] == "raise":
                    raise
                is_path = isinstance(value, str) and self._pipeline._native.input_kind != "text"
                shown = name if name is not None else value if is_path else f"inputs[{i}]"
                lines.append(json.dumps({"input": shown, "model": self._pipeline.model, "error": str(e)}))
        return self._checked(lines)

    def _checked(self, lines):
        if self._columns["errors"] == "raise":
            for line in lines:
                result = json.loads(line)
                if "error" in result:
                    raise ZooError(result["error"])
        return lines
