"""Progress bars for long steps; silent when output is not a terminal or in CI."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from frankenmoe.support.settings import progress_off

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

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    if not bars_enabled():
        transformers.utils.logging.disable_progress_bar()


# Unwatched (a log, CI), a long step says how far it is at most this often.
LINE_EVERY_S = 10.0


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A bar on a terminal; otherwise a line on stderr whenever LINE_EVERY_S passed
    (nothing for a step that is over sooner), so no log is silent for long."""
    if bars_enabled():
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return progress_lines(items, desc, total)


def progress_lines(
    items: Iterable[T],
    desc: str,
    total: int | None,
    write: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    clock: Callable[[], float] = time.monotonic,
    every: float = LINE_EVERY_S,
) -> Iterator[T]:
    start = last = clock()
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if now - last >= every:
            left = f", about {(now - start) / done * (total - done):.0f} s left" if total and done < total else ""
            write(f"{desc}: {done}/{total or '?'} after {now - start:.0f} s{left}")
            last = now
