"""Seeds and thread counts for numerically sensitive work.

The same recipe must give the same bytes on every run: every random draw is
seeded from the recipe, and CPU math runs on a fixed number of threads because
reductions split over a different number of threads round differently.
"""

from __future__ import annotations

import random

THREADS = 2


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
