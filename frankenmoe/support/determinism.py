"""Seeds and thread counts for numerically sensitive work.

The same recipe must give the same bytes on every run: every random draw is
seeded from the recipe, and CPU math runs on a fixed number of threads because
reductions split over a different number of threads round differently.

These are process-wide settings of Python, numpy and torch. A stage sets them
inside `torch_scope()` (the engine runs every stage that uses torch in one), which
puts back what the process had before: the next stage, or a caller that runs a
build in-process (the study, the bench, tests), starts from the same state
whichever stages ran before it in the process.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

THREADS = 2


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators and fix torch's threads and
    deterministic mode: inside a torch_scope(), or in a child process of its own."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def torch_scope() -> Iterator[None]:
    """For the block: torch on THREADS threads with deterministic algorithms;
    afterwards the process's own thread count, deterministic mode, gradient mode
    and the states of Python's, numpy's and torch's (CPU) generators are restored."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    grad = torch.is_grad_enabled()
    generators = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_grad_enabled(grad)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.random.set_rng_state(generators[2])
