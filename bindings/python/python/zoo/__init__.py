"""zoo: real pretrained neural networks on your own machine, from Python.

    >>> import zoo
    >>> classify = zoo.pipeline("image-classification", top_k=3)
    >>> classify("photo.jpg")["predictions"][0]["label"]
    'tiger cat'

A pipeline loads its model once and runs many inputs; each result is the dict that
``zoo run TASK INPUT --json`` prints (style transfer: a PIL image). The work is zoo's Rust code,
the same as the command line's, with the GIL released while a model runs.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
from typing import Any

from . import _zoo
from ._zoo import ZooError

__version__ = _zoo.__version__
__all__ = ["pipeline", "Pipeline", "tasks", "models", "download", "ZooError", "__version__"]

# Whisper listens at 16 kHz: a 1-D float array for speech is taken to be sampled at this rate.
SPEECH_RATE = 16_000


def tasks() -> list[dict]:
    """The tasks this build knows: name, aliases, summary, input kind, the file extensions read
    from folders, options, explanations."""
    return json.loads(_zoo.tasks())


def models(task: str | None = None, offline: bool | None = None) -> list[dict]:
    """``zoo list --json``'s objects: every model of ``task`` (or of every task)."""
    return json.loads(_zoo.models(task, _offline(offline)))


def download(name: str, offline: bool | None = None) -> list[str]:
    """Fetches a model (catalogue id, Hub id ``owner/name[@revision]``, or a task's models) into
    the Hugging Face cache; returns its files' paths."""
    return _zoo.download(name, _offline(offline))


def pipeline(
    task: str,
    model: str | None = None,
    *,
    threads: int | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    **options: Any,
) -> Pipeline:
    """A pipeline for ``task`` (a name or alias), with ``model`` (catalogue id, Hub id or local
    folder; default: the task's default) and the task's options as keyword arguments
    (``top_k=3``, ``explain=True``, ``language="de"``, ``style="starry-blue"``).

    ``threads``: CPU threads for the whole process (default: all cores). Thread pools start once,
    so the first pipeline of a process decides. ``offline``: never touch the network (default:
    ``HF_HUB_OFFLINE``).
    """
    return Pipeline(task, model, threads=threads, offline=offline, device=device, **options)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class Pipeline:
    """A task with its model loaded, ready for many inputs. Call it with one input or a list.

    Inputs: a path (``str`` or ``os.PathLike``; folders and patterns expand as on the command
    line), ``bytes`` of a file, a ``str`` of text for text tasks, a numpy ``uint8`` H x W x 3 array
    or a PIL image for image tasks, a 1-D float numpy array at 16 kHz for speech.
    """

    def __init__(self, task, model=None, *, threads=None, offline=None, device="cpu", **options):
        self._spec = dict(task=task, model=model, threads=threads, offline=offline, device=device, options=options)
        effective = _zoo.set_threads(threads)
        if threads is not None and effective != max(threads, 1):
            warnings.warn(
                f"zoo: this process already runs with {effective or 'all'} CPU threads "
                f"(set by its first pipeline); threads={threads} is ignored",
                RuntimeWarning,
                stacklevel=3,
            )
        explain = bool(options.pop("explain", False))
        pairs, files = [], []
        for name, value in options.items():
            if value is None or value is False:
                continue
            option = _option_name(name)
            upload = _as_file(value, option)
            if upload is not None:
                files.append((option, *upload))
            else:
                pairs.append((option, _option_value(value)))
        self._native = _zoo.NativePipeline(task, model, pairs, files, explain, _offline(offline), device)

    @property
    def task(self) -> str:
        return self._native.task

    @property
    def model(self) -> str:
        return self._native.model

    def __repr__(self) -> str:
        return f"zoo.pipeline({self.task!r}, model={self.model!r})"

    # Pickled as what made it, and loaded again where it lands (a Ray or Spark worker).
    def __reduce__(self):
        spec = dict(self._spec)
        options = spec.pop("options")
        return (_rebuild, (spec, options))

    def __call__(self, inputs, *, errors: str = "raise"):
        """Runs one input (returns its result) or a list (returns a list, in order).

        ``errors="raise"`` (default) raises :class:`ZooError` with the first failed input's
        one-line message; ``errors="return"`` puts ``{"error": ..., "input": ...}`` in its place.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        results = []
        for text, error, png in self._run(items):
            if error is not None and errors == "raise":
                raise ZooError(error)
            result = json.loads(text)
            if png is not None:
                result = _picture(png)
            results.append(result)
        return results[0] if single and len(results) == 1 else results

    def json(self, inputs, *, names=None) -> list[str]:
        """Each input's result as the exact line ``zoo run --json`` prints (failed inputs
        included, as ``{"input", "model", "error"}`` objects), in order: for JSON Lines files.

        ``names``: what to call inputs given as bytes or arrays (for instance the path they were
        read from), one per input; by default ``inputs[i]``.
        """
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        return [text for text, _, _ in self._run(items, names, pictures=False)]

    def _run(self, items, names=None, pictures=True):
        kind = self._native.input_kind
        if names is not None and len(names) != len(items):
            raise ValueError(f"names: {len(names)} names for {len(items)} inputs")
        raw = [_raw_input(item, i, kind, None if names is None else names[i]) for i, item in enumerate(items)]
        return self._native.run(raw, pictures)


def _option_name(name: str) -> str:
    """A Python keyword as the command line spells the option (``top_k`` -> ``top-k``)."""
    return name.replace("_", "-")


def _rebuild(spec, options):
    return Pipeline(spec.pop("task"), spec.pop("model"), **spec, **options)


def _as_file(value, option):
    """An option value that is a file's content (bytes, an array, a PIL image): (name, bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (f"{option}.bin", bytes(value))
    if _is_pil(value) or _is_array(value):
        return (f"{option}.png", _png(value, option))
    return None


def _raw_input(item, index, kind, name=None):
    if isinstance(item, os.PathLike):
        return ("file", os.fspath(item), os.fsencode(item))
    if isinstance(item, str):
        if kind == "text":
            return ("text", name or f"inputs[{index}]", item.encode("utf-8"))
        return ("file", item, item.encode("utf-8"))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ("bytes", name or f"inputs[{index}]", bytes(item))
    if kind == "image" and (_is_pil(item) or _is_array(item)):
        name = name or f"inputs[{index}].png"
        return ("bytes", name, _png(item, name))
    if kind == "audio" and _is_array(item):
        name = name or f"inputs[{index}].wav"
        return ("bytes", name, _wav(item, name))
    what = {"image": "a path, bytes, a uint8 HxWx3 numpy array or a PIL image",
            "audio": "a path, bytes or a 1-D float numpy array at 16 kHz",
            "text": "a str of text, a path-like or bytes"}[kind]
    raise TypeError(f"inputs[{index}]: {type(item).__name__} is not an input of this task ({what})")


def _is_pil(value) -> bool:
    return type(value).__module__.startswith("PIL.")


def _is_array(value) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _png(picture, name) -> bytes:
    """A picture as PNG bytes, losslessly, so zoo decodes the pixels it was given."""
    from PIL import Image

    if _is_array(picture):
        import numpy as np

        if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] not in (3, 4)):
            raise ValueError(f"{name}: an image array is uint8, H x W x 3 (RGB), not {picture.dtype} {picture.shape}")
        picture = Image.fromarray(np.ascontiguousarray(picture))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _wav(samples, name) -> bytes:
    """Mono float samples at 16 kHz as a 32-bit float WAV, exactly the values given."""
    import numpy as np

    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.dtype.kind != "f":
        raise ValueError(f"{name}: audio is a 1-D float array at {SPEECH_RATE} Hz, not {samples.dtype} {samples.shape}")
    data = samples.astype("<f4").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, SPEECH_RATE, SPEECH_RATE * 4, 4, 32)
    return header + b"data" + struct.pack("<I", len(data)) + data


def _picture(png: bytes):
    from PIL import Image

    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture
