"""Writing a folder so that nobody ever sees half of it, and linking files into one.

Every output folder (a stage's result, a published dist folder, the study, the
example models, llama.cpp's wheel and converter) is written into a temporary
sibling and renamed into place once complete: a killed or failed run leaves the
previous folder (or none), never a half-written one. On any failure the temporary
folder is removed, and a full disk is said as such (EnvironmentProblem), not as
the library's own error.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from frankenmoe.errors import EnvironmentProblem


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, also when a library wraps it in its own error class (safetensors'
    SafetensorError says "No space left on device (os error 28)")."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "os error 28" in str(error)


@contextmanager
def removed_on_failure(tmp: Path, disk_full: str) -> Iterator[None]:
    """A half-written `tmp` never stays behind; a full disk raises EnvironmentProblem(disk_full)."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise EnvironmentProblem(disk_full) from None
        raise


def temporary_sibling(final: Path, tag: str = "tmp") -> Path:
    """`.<name>.<tag>-<pid>` beside `final`: on the same file system, so the rename is atomic."""
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}")


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished `tmp` at `final`: the old folder is renamed aside first and
    removed after, so `final` is always either the old folder or the new one."""
    if final.exists():
        old = temporary_sibling(final, "old")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)


@contextmanager
def atomic_folder(final: Path, disk_full: str, tmp: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder (`tmp`, default temporary_sibling(final));
    when the block finishes it replaces `final`; on any failure it is removed and
    `final` is left as it was."""
    tmp = temporary_sibling(final) if tmp is None else tmp
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with removed_on_failure(tmp, disk_full):
        tmp.mkdir()
        yield tmp
        replace_folder(tmp, final)


@contextmanager
def atomic_files(folder: Path, disk_full: str) -> Iterator[Path]:
    """Yield an empty temporary folder inside `folder`; when the block finishes, each
    file written there replaces its namesake in `folder` by one rename (a report
    beside other outputs: each file is whole, old or new); on failure none does."""
    tmp = temporary_sibling(folder / "files")
    shutil.rmtree(tmp, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    with removed_on_failure(tmp, disk_full):
        tmp.mkdir()
        yield tmp
        for f in sorted(tmp.iterdir()):
            os.replace(f, folder / f.name)
        tmp.rmdir()


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to `src` (no bytes copied), a copy where linking is impossible
    (another file system, links not supported); a full disk is never hidden by a copy."""
    try:
        os.link(src, dst)
    except OSError as e:
        if is_disk_full(e):
            raise
        shutil.copy2(src, dst)
