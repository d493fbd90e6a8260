"""Progress bars for long steps; silent when output is not a terminal or in CI."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from pipeline.support.settings import progress_off

T = TypeVar("T")


def bars_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI") and not progress_off()


def quiet_environment() -> None:
    """At start-up, before any library is imported (tqdm reads its settings then)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not bars_enabled():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_libraries() -> None:
    """Libraries' own bars and warnings would drown the one-line-per-stage output.
    Called just before a stage runs, not at start-up: a fully cached build never
    imports torch or transformers (it takes well under a second, not five)."""
    quiet_environment()
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    if not bars_enabled():
        transformers.utils.logging.disable_progress_bar()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=not bars_enabled(), leave=False, dynamic_ncols=True)
