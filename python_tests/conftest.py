import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the GPU machine may lack hypothesis; only the property tests need it
    settings = None

# Deterministic example generation in CI; more examples when asked for locally.
if settings is not None:
    settings.register_profile(
        "default",
        max_examples=int(os.environ.get("RLAIFV_HYPOTHESIS_EXAMPLES", "40")),
        deadline=None,
        derandomize=os.environ.get("RLAIFV_HYPOTHESIS_RANDOM", "0") != "1",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile("default")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["native", "reference"])
def backend(request, monkeypatch):
    """Run a test through the native kernels and through the pure-PyTorch fallback of the dispatch point."""
    if request.param == "reference":
        from rlaifv_fast.ops import _dispatch

        monkeypatch.setattr(_dispatch, "backend_for", lambda device: _dispatch.Backend.REFERENCE)
    return request.param
