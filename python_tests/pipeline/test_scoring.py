"""scoring.py: response log-probs under the tiny LLaVA (and the text-only tiny Llama) against a direct computation."""

from __future__ import annotations

import pytest
import torch
from fixtures_tiny import make_images

from rlaifv_fast.engines.hf import HFEngine
from rlaifv_fast.pipeline.scoring import (
    IGNORE_INDEX,
    Triple,
    collate,
    encode_triples,
    eos_token_id,
    response_logps,
)

TOL = 1e-5
RESPONSES = [
    "There is a red circle.",
    "A blue square is on the left of the image, next to a small green triangle.",
    "No.",
    "",
]


@pytest.fixture(scope="module")
def engine(tiny_llava):
    return HFEngine(tiny_llava, batch_size=8)


@pytest.fixture(scope="module")
def triples():
    imgs = make_images(3)
    return [
        Triple(imgs[0], "Describe the image.", RESPONSES[0]),
        Triple(imgs[1], "What is in the image?", RESPONSES[1]),
        Triple(imgs[0], "Is there a dog?", RESPONSES[2]),
        Triple(imgs[2], "Describe the image.", RESPONSES[3]),
        Triple(imgs[1], "Describe the image.", RESPONSES[0]),
    ]


def _direct(engine: HFEngine, t: Triple) -> tuple[float, list[float]]:
    """Full forward of prompt ++ response ++ EOS, float64 log_softmax over the full vocabulary, gather at the
    response positions."""
    prompt = engine.render(t.question, image=t.image is not None)
    kwargs = {"images": [t.image]} if t.image is not None and engine.multimodal else {}
    if engine.multimodal:
        enc = engine.processor(text=[prompt], return_tensors="pt", add_special_tokens=engine._add_special(prompt),
                               **kwargs)
    else:
        enc = engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=engine._add_special(prompt))
    response = engine.tokenizer(t.response, add_special_tokens=False)["input_ids"] + [eos_token_id(engine)]
    P = enc["input_ids"].shape[1]
    ids = torch.cat([enc["input_ids"], torch.tensor([response])], dim=1)
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
    logp = logits.double().log_softmax(-1)
    tok = [logp[P - 1 + j, y].item() for j, y in enumerate(response)]
    return sum(tok), tok


def test_matches_direct_computation(engine, triples):
    out = response_logps(engine, triples, batch_size=3, return_per_token=True)
    for i, t in enumerate(triples):
        total, tok = _direct(engine, t)
        assert out.counts[i].item() == len(tok)
        assert out.logps[i].item() == pytest.approx(total, abs=TOL)
        assert out.means[i].item() == pytest.approx(total / len(tok), abs=TOL)
        assert torch.allclose(out.token_logps[i].double(), torch.tensor(tok, dtype=torch.float64), atol=TOL)


def test_labels_mask_everything_but_the_response_and_eos(engine, triples):
    enc = encode_triples(engine, triples)
    eos = eos_token_id(engine)
    image_id = engine._image_token_id
    for t, e in zip(triples, enc):
        response = engine.tokenizer(t.response, add_special_tokens=False)["input_ids"]
        # prompt and response tokenized separately, then concatenated
        assert e.input_ids[e.prompt_len :] == response + [eos]
        assert e.labels[: e.prompt_len] == [IGNORE_INDEX] * e.prompt_len
        assert e.labels[e.prompt_len :] == response + [eos]
        assert image_id in e.input_ids[: e.prompt_len]
        assert all(lab == IGNORE_INDEX for tok, lab in zip(e.input_ids, e.labels) if tok == image_id)
    no_eos = encode_triples(engine, triples[:1], append_eos=False)[0]
    assert no_eos.labels[-1] != eos and len(no_eos.input_ids) == len(enc[0].input_ids) - 1
    batch = collate(engine, enc)
    for i, e in enumerate(enc):
        assert batch.labels[i, len(e.input_ids) :].eq(IGNORE_INDEX).all()  # right padding is masked
        assert batch.inputs["attention_mask"][i].sum().item() == len(e.input_ids)


def test_padding_and_batching_do_not_change_results(engine, triples):
    batched = response_logps(engine, triples, batch_size=len(triples), return_per_token=True)
    for i, t in enumerate(triples):
        alone = response_logps(engine, [t], batch_size=1, return_per_token=True)
        assert alone.logps[0].item() == pytest.approx(batched.logps[i].item(), abs=TOL)
        assert alone.counts[0].item() == batched.counts[i].item()
        assert torch.allclose(alone.token_logps[0], batched.token_logps[i], atol=TOL)


def test_text_only_model(tiny_llama):
    engine = HFEngine(tiny_llama)
    triples = [Triple(None, "Describe the image.", RESPONSES[0]), Triple(None, "Is it red?", RESPONSES[2])]
    out = response_logps(engine, triples, batch_size=2)
    for i, t in enumerate(triples):
        assert out.logps[i].item() == pytest.approx(_direct(engine, t)[0], abs=TOL)


def test_rejects_bad_arguments(engine, triples):
    with pytest.raises(ValueError, match="batch_size"):
        response_logps(engine, triples, batch_size=0)
    with pytest.raises(TypeError, match="HFEngine"):
        response_logps(object(), triples)
