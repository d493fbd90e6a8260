"""The process-wide settings a stage may change for its own run, given back after it.

A stage quiets its libraries (environment switches, logger levels, transformers'
progress bars) and a library may set its own switches when imported. The engine runs
every stage inside `process_state_kept()`, so the next stage, and a caller that runs a
build in-process (a notebook, the study, tests), gets the process back as it was,
as `torch_scope()` does for seeds and threads.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator


def _logger_levels() -> dict[str, int]:
    """The level each logger has now, the root logger under ""."""
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    levels[""] = logging.getLogger().level
    return levels


def _transformers_bars() -> bool | None:
    """Whether transformers shows progress bars; None while it is not imported."""
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled()


@contextmanager
def process_state_kept() -> Iterator[None]:
    """For the block, anything goes; afterwards the environment variables, every logger's
    level (loggers made in the block go back to NOTSET, their default) and, when
    transformers was imported before it, transformers' progress bars are what they were."""
    environment = dict(os.environ)
    levels = _logger_levels()
    bars = _transformers_bars()
    try:
        yield
    finally:
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)
        for name, level in _logger_levels().items():
            if level != levels.get(name, logging.NOTSET):
                logging.getLogger(name or None).setLevel(levels.get(name, logging.NOTSET))
        if bars is not None and _transformers_bars() != bars:
            from transformers.utils import logging as hf_logging

            with warnings.catch_warnings():  # huggingface_hub warns that HF_HUB_DISABLE_PROGRESS_BARS, if set, wins
                warnings.simplefilter("ignore")
                if bars:
                    hf_logging.enable_progress_bar()
                else:
                    hf_logging.disable_progress_bar()
