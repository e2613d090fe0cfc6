"""The native build: what it compiled in, and that the installed package (not the source tree) is under test."""

import os
import shutil

import pytest
import torch

import rlaifv_fast


def test_build_info_reports_backends():
    info = rlaifv_fast.build_info()
    assert info["cpu"] is True
    assert isinstance(info["openmp"], bool) and info["cpu_threads"] >= 1
    assert set(info) >= {"cuda", "cuda_archs", "cuda_version", "compiler"}


def test_cuda_kernels_compiled_when_nvcc_is_present():
    # CI has nvcc: the CUDA kernels must compile there even though nothing can run them
    has_nvcc = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    if os.environ.get("RLAIFV_CUDA", "AUTO").upper() == "OFF" or not has_nvcc:
        pytest.skip("no nvcc on this machine (or RLAIFV_CUDA=OFF): the CUDA kernels are not built")
    info = rlaifv_fast.build_info()
    assert info["cuda"] is True
    archs = info["cuda_archs"].split(",")
    if "RLAIFV_CUDA_ARCHS" not in os.environ.get("CMAKE_ARGS", ""):  # the default architectures
        assert "80" in archs and "90" in archs


def test_ops_are_registered():
    import torch

    for name in ("token_logps", "token_logps_backward", "token_logps_backward_", "bon_token_rewards",
                 "yes_no_logprobs"):
        assert hasattr(torch.ops.rlaifv_fast, name)


# --------------------------------------------------------------------------------------------------------------------
# the CUDA backend


@pytest.mark.cuda
def test_cuda_backend_is_native():
    from rlaifv_fast.ops import _dispatch

    assert rlaifv_fast.build_info()["cuda"]
    assert _dispatch.backend_for(torch.device("cuda")) is _dispatch.Backend.CUDA
