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
def backend(request):
    """Run a test through the native kernels and through the pure-PyTorch fallback of the dispatch point."""
    if request.param == "native":
        yield request.param
        return
    from rlaifv_fast.ops import force_backend

    with force_backend("reference"):
        yield request.param


# ---- tiny offline models (built once per session) and test images


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from rlaifv_fast.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from rlaifv_fast.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def images():
    from fixtures_tiny import make_images

    return make_images(3)
