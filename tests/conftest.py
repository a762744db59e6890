import os
import warnings

# OpenMP threads that wait passively: with an active wait (the default), the two threads the MNIST
# CNN trains on spun against the other worker and any other process on the two cores -- training
# took 171 s beside one CPU-bound process instead of 52 s (same weights: the wait policy does not
# change the arithmetic). Read when the OpenMP runtime starts, so set before torch is imported;
# the Makefile sets it for the workers too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
# one torch thread per pytest-xdist worker (two workers share the two cores), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
