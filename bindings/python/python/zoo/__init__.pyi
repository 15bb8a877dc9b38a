from os import PathLike
from typing import Any, Literal, Sequence, Union, overload

import numpy as np
from PIL import Image

__version__: str
SPEECH_RATE: int

class ZooError(RuntimeError):
    """Work zoo could not do (a bad input, a failed download): the CLI's one-line message."""

Input = Union[str, PathLike[str], bytes, bytearray, memoryview, np.ndarray, Image.Image]
Result = Union[dict[str, Any], Image.Image]

def tasks() -> list[dict[str, Any]]: ...
def models(task: str | None = None, offline: bool | None = None) -> list[dict[str, Any]]: ...
def download(name: str, offline: bool | None = None) -> list[str]: ...
def pipeline(
    task: str,
    model: str | None = None,
    *,
    threads: int | None = None,
    offline: bool | None = None,
    device: str = "cpu",
    **options: Any,
) -> Pipeline: ...

class Pipeline:
    def __init__(
        self,
        task: str,
        model: str | None = None,
        *,
        threads: int | None = None,
        offline: bool | None = None,
        device: str = "cpu",
        **options: Any,
    ) -> None: ...
    @property
    def task(self) -> str: ...
    @property
    def model(self) -> str: ...
    @overload
    def __call__(self, inputs: Input, *, errors: Literal["raise", "return"] = "raise") -> Result: ...
    @overload
    def __call__(self, inputs: Sequence[Input], *, errors: Literal["raise", "return"] = "raise") -> list[Result]: ...
    def json(self, inputs: Input | Sequence[Input], *, names: Sequence[str] | None = None) -> list[str]: ...
