"""Every supported model family (rlaifv_fast.testing.families.FAMILIES) through every stage, on a tiny random-weight
model built offline:

- the project's per-token reference log-probs (a batch of images of different sizes, so anyres / image-splitting
  processors give different crop counts in one batch) equal a plain transformers forward + log_softmax on inputs
  built straight from the processor, response tokens + the family's end-of-turn token only, within 1e-4;
- candidates end with the family's end-of-turn token, and the scored sequence is the sampled one;
- a one-iteration `loop` (generate, feedback, pairs, reflogps, train) runs, and training's policy log-probs at
  step 0 equal the cached reference's (rewards 0, loss ln 2);
- training on the lm_head-fused path and with LoRA starts at the same step-0 values; Best-of-N runs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fixtures_tiny import make_images
from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.store import read_records
from rlaifv_fast.testing.families import FAMILIES

TRIPLES = [
    ("Describe the image.", "There is a red circle."),
    ("What is in the image?", "A small green triangle and a blue square."),
    ("What color is the circle?", "The circle is red."),
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    fam = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    return fam, fam.build(root / "model", seed=0), root


def _images(fam, n):
    return make_images(n, seed=3) if fam.multimodal else [None] * n


def _prompts(fam, root, n=3):
    rows = []
    for i, image in enumerate(_images(fam, n)):
        row = {"id": f"p{i}", "question": TRIPLES[i % len(TRIPLES)][0]}
        if image is not None:
            image.save(root / f"{i}.png")
            row["image"] = str(root / f"{i}.png")
        rows.append(row)
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _plain_model(fam, folder):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if fam.multimodal else AutoModelForCausalLM
    # eager: transformers' reference attention (sdpa drops Gemma 2's attention logit soft-capping)
    return cls.from_pretrained(folder, dtype=torch.float32, local_files_only=True, attn_implementation="eager").eval()


def test_reference_logps_equal_a_plain_forward(family):
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.pipeline.scoring import Triple, response_logps

    fam, folder, _ = family
    engine = HFEngine(folder, **fam.engine_options)
    images = _images(fam, len(TRIPLES))
    triples = [Triple(images[i], q, r) for i, (q, r) in enumerate(TRIPLES)]
    got = response_logps(engine, triples, batch_size=len(triples), return_per_token=True)
    model = _plain_model(fam, folder)
    tok = engine.tokenizer
    end = tok.convert_tokens_to_ids(fam.end_token)
    assert end is not None and end != tok.unk_token_id, f"{fam.name}: no token {fam.end_token!r}"
    for i, t in enumerate(triples):
        prompt = engine.render(t.question, image=t.image is not None)
        response = list(tok(t.response, add_special_tokens=False)["input_ids"]) + [end]
        inputs, P = fam.oracle_inputs(engine.processor, tok, prompt, t.image, response)
        with torch.no_grad():
            logp = model(**inputs).logits[0].double().log_softmax(-1)
        R = len(response)
        expected = logp[P - 1 : P + R - 1].gather(1, torch.tensor(response)[:, None])[:, 0]
        assert got.counts[i].item() == R, f"{fam.name}: scored {got.counts[i].item()} tokens, expected {R}"
        torch.testing.assert_close(got.token_logps[i].double(), expected, atol=1e-4, rtol=0)


def test_candidates_end_with_the_end_of_turn_token(family):
    from rlaifv_fast.engines.base import DecodingConfig, SampleRequest
    from rlaifv_fast.engines.hf import HFEngine

    fam, folder, _ = family
    engine = HFEngine(folder, **fam.engine_options)
    end = engine.tokenizer.convert_tokens_to_ids(fam.end_token)
    assert end in engine._eos_ids, f"{fam.name}: generation does not stop at {fam.end_token!r}"
    images = _images(fam, 2)
    requests = [SampleRequest(f"r{i}", "Describe the image.", images[i]) for i in range(2)]
    samples = engine.sample(requests, 2, DecodingConfig(temperature=1.0, max_new_tokens=6), run_seed=1)
    assert all(s.finish_reason in ("stop", "length") and 1 <= s.num_tokens <= 6 for row in samples for s in row)


def test_one_loop_iteration_then_both_training_paths_lora_and_bon(family, capsys):
    fam, folder, root = family
    prompts = _prompts(fam, root)
    work = root / "loop"
    assert main(["loop", "--prompts", str(prompts), "--model", str(folder), "--work-dir", str(work),
                 "--iterations", "1", "--generate.n", "4", "--generate.temperature", "1.0",
                 "--generate.max-new-tokens", "10", "--train.max-steps", "1", "--train.lr", "1e-3",
                 "--train.warmup-ratio", "0", "--train.per-device-batch-size", "2", "--train.sft-weight", "0",
                 "--on-no-pairs", "fail", "--no-progress",
                 *(f for stage in ("generate", "feedback", "reflogps", "train") for f in _flags(fam, stage + "."))
                 ]) == 0
    it = work / "iter0"
    assert len(list(read_records(it / "candidates.jsonl"))) == 12
    assert len(list(read_records(it / "feedback.jsonl"))) == 12
    ref = it / "pairs.ref.parquet"
    first = json.loads((it / "train" / "metrics.jsonl").read_text().splitlines()[0])
    _assert_policy_equals_reference(fam, first)
    for extra in (["--logps-path", "lm_head_chunked"], ["--lora", "--lora.r", "4"]):
        out = root / ("train-" + extra[1].strip("-"))
        assert main(["train", "--pairs", str(ref), "--model", str(folder), "--output-dir", str(out),
                     "--max-steps", "1", "--lr", "1e-3", "--warmup-ratio", "0", "--per-device-batch-size", "2",
                     "--sft-weight", "0", *extra, *_flags(fam)]) == 0
        _assert_policy_equals_reference(fam, json.loads((out / "metrics.jsonl").read_text().splitlines()[0]))
    capsys.readouterr()
    bon = root / "bon.jsonl"
    assert main(["bon", "--prompts", str(prompts), "--policy", str(it / "train" / "final"), "--reference",
                 str(folder), "--out", str(bon), "--n", "2", "--max-new-tokens", "6", "--temperature", "1.0",
                 "--no-progress", *_flags(fam)]) == 0
    records = list(read_records(bon))
    assert len(records) == 3 and all(len(r["candidates"]) == 2 for r in records)


def _flags(fam, prefix=""):
    """The family's engine options as stage flags (e.g. --chat-template, --generate.chat-template)."""
    return [f for k, v in fam.engine_options.items() for f in ("--" + prefix + k.replace("_", "-"), str(v))]


def _assert_policy_equals_reference(fam, metrics):
    """Step 0: the policy is the reference, so both rewards are 0 and the sigmoid loss (SFT term off) is ln 2."""
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-5), fam.name
    assert metrics["rewards/rejected"] == pytest.approx(0.0, abs=1e-5), fam.name
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5), fam.name


def test_readme_lists_every_family():
    from pathlib import Path

    from rlaifv_fast.testing.families import support_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "<!-- families:start -->\n" + support_table() + "<!-- families:end -->" in readme
