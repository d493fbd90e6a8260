"""Progress bars for long steps; silent when output is not a terminal or in CI."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def bars_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("FRANKENMOE_NO_PROGRESS")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=not bars_enabled(), leave=False, dynamic_ncols=True)
