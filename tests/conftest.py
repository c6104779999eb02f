import logging

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _quiet_tvm():
    logging.getLogger("tvm").setLevel(logging.WARNING)
