"""Suite-wide settings."""

import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_torch():
    """One intra-op thread for PyTorch, when a test module imported it.

    The PyTorch references in the tests are tiny; torch's default pool only
    contends with XLA and the other test workers on a small machine (a 13x19
    forward took 1 s with 2 threads, 10 ms with 1). `nafnet-bench` sets its own
    thread count, so the benchmark tests are unaffected.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield
