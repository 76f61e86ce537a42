"""Test-session settings: one torch thread per pytest worker.

The default suite runs in two pytest-xdist workers (pyproject's ``addopts``) on 2-core
machines; two OpenMP threads in each would oversubscribe the cores.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
