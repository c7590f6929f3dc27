import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Before any tensor exists: a fixed single-threaded CPU device keeps results reproducible and
# avoids MegEngine's CUDA probe.
from common.device import use_device  # noqa: E402

use_device("cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
