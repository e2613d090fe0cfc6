"""Self-feedback Best-of-N on tiny LLaVAs: the policy is a second random tiny LLaVA (seed 1, same tokenizer), the
reference the session's tiny LLaVA (seed 0)."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_tiny import make_images, png_bytes

from rlaifv_fast import bon_rewards
from rlaifv_fast.pipeline.bon import BoNConfig, bon_report, report_path_for, run_bon
from rlaifv_fast.cli import main
from rlaifv_fast.pipeline.data import Prompt
from rlaifv_fast.engines.base import DecodingConfig
from rlaifv_fast.engines.hf import HFEngine
from rlaifv_fast.pipeline.scoring import Triple, collate, encode_triples
from rlaifv_fast.pipeline.store import read_records

N = 4
CONFIG = BoNConfig(n=N, beta=0.1, decoding=DecodingConfig(temperature=1.0, max_new_tokens=8), run_seed=3,
                   batch_size=2, score_batch_size=3)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    from rlaifv_fast.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava-policy", seed=1)


@pytest.fixture(scope="module")
def policy(policy_path):
    return HFEngine(policy_path, model_name="policy")


@pytest.fixture(scope="module")
def reference(tiny_llava):
    return HFEngine(tiny_llava, model_name="reference")


@pytest.fixture(scope="module")
def prompts():
    imgs = make_images(2)
    return [
        Prompt("p0", "Describe the image.", {"bytes": png_bytes(imgs[0]), "path": "0.png"}),
        Prompt("p1", "What is in the image?", {"bytes": png_bytes(imgs[1]), "path": "1.png"}),
        Prompt("p2", "Is there a red circle?", {"bytes": png_bytes(imgs[0]), "path": "0.png"}),
    ]


@pytest.fixture(scope="module")
def bon_run(policy, reference, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bon") / "bon.jsonl"
    report = run_bon(prompts, policy, reference, out, CONFIG, progress=False)
    return out, report, list(read_records(out))


def _direct_rewards(policy, reference, prompt, cands, *, length_normalize=True):
    """bon_rewards on the full logits of both models (no cut at the prompt, reference as logits); a candidate cut
    at max_new_tokens is scored without an EOS."""
    texts = [c["text"] for c in cands]
    eos = [c["finish_reason"] == "stop" for c in cands]
    enc = encode_triples(policy, [Triple(prompt.image, prompt.question, t) for t in texts], append_eos=eos)
    batch_p, batch_r = collate(policy, enc), collate(reference, enc)
    with torch.no_grad():
        logits_p = policy.model(**batch_p.inputs).logits
        logits_r = reference.model(**batch_r.inputs).logits
    return bon_rewards(logits_p, logits_r, batch_p.labels, beta=CONFIG.beta, groups=len(texts), shift=True,
                       length_normalize=length_normalize)


def test_picks_the_argmax_of_bon_rewards(policy, reference, prompts, bon_run):
    out, report, records = bon_run
    assert [r["id"] for r in records] == ["p0", "p1", "p2"] and report.written == 3
    for prompt, rec in zip(prompts, records):
        cands = rec["candidates"]
        assert [c["index"] for c in cands] == list(range(N))
        direct = _direct_rewards(policy, reference, prompt, cands)
        rewards = torch.tensor([c["reward"] for c in cands], dtype=torch.float64)
        assert torch.allclose(rewards, direct.rewards.double(), atol=1e-5)
        assert [c["num_tokens"] for c in cands] == direct.counts.tolist()
        assert rec["picked_index"] == int(direct.best[0]) == int(torch.argmax(rewards))
        assert rec["text"] == cands[rec["picked_index"]]["text"]
        for c in cands:  # the two rules, from the stored sums
            ratio = c["policy_logp"] - c["ref_logp"]
            assert c["reward_unnormalized"] == pytest.approx(CONFIG.beta * ratio, abs=1e-9)
            assert c["reward_normalized"] == pytest.approx(CONFIG.beta * ratio / c["num_tokens"], abs=1e-9)
            assert c["reward"] == pytest.approx(c["reward_normalized"], abs=1e-5)
            assert c["words"] == len(c["text"].split())
        unnorm = _direct_rewards(policy, reference, prompt, cands, length_normalize=False)
        assert rec["picked_index_unnormalized"] == int(unnorm.best[0])
        assert rec["picked_index_normalized"] == rec["picked_index"]


def test_report(bon_run):
    out, report, records = bon_run
    saved = json.loads(report_path_for(out).read_text())
    words = [c["words"] for r in records for c in r["candidates"]]
    assert saved["prompts"] == 3 and saved["candidates"] == 3 * N
    assert saved["mean_words_all"] == pytest.approx(sum(words) / len(words))
    picked = [r["candidates"][r["picked_index"]]["words"] for r in records]
    assert saved["mean_words_picked"] == pytest.approx(sum(picked) / len(picked))
    assert saved["mean_words_picked_length_normalized"] == saved["mean_words_picked"]
    assert "mean_words_picked_unnormalized" in saved and "picks_agree_fraction" in saved
    assert saved == {**bon_report(records), **{k: saved[k] for k in saved if k not in bon_report(records)}}
    assert report.notes["mean_words_all"] == saved["mean_words_all"]


def test_deterministic_for_a_seed_and_resumable(policy, reference, prompts, bon_run, tmp_path):
    _, _, records = bon_run
    again = tmp_path / "again.jsonl"
    # other batching, same seed: the same candidates, rewards and picks
    config = BoNConfig(**{**CONFIG.__dict__, "batch_size": 3, "score_batch_size": 8})
    run_bon(prompts, policy, reference, again, config, progress=False)
    rerun = list(read_records(again))
    assert [r["text"] for r in rerun] == [r["text"] for r in records]
    for a, b in zip(rerun, records):
        assert [c["text"] for c in a["candidates"]] == [c["text"] for c in b["candidates"]]
        assert [c["reward"] for c in a["candidates"]] == pytest.approx([c["reward"] for c in b["candidates"]],
                                                                       abs=1e-5)
    report = run_bon(prompts, policy, reference, again, config, progress=False)
    assert report.written == 0 and report.already_done == 3 and len(list(read_records(again))) == 3


def test_policy_equal_to_reference_gives_zero_rewards_and_the_first_candidate(reference, prompts, tmp_path):
    out = tmp_path / "self.jsonl"
    run_bon(prompts[:2], reference, reference, out, CONFIG, progress=False)
    for rec in read_records(out):
        assert all(c["reward"] == 0.0 and c["reward_unnormalized"] == 0.0 for c in rec["candidates"])
        # every reward ties at 0: ties go to the first candidate
        assert rec["picked_index"] == rec["picked_index_unnormalized"] == 0


def test_cli_bon(policy_path, tiny_llava, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    rows = []
    for i, image in enumerate(make_images(2)):
        image.save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"img/{i}.png", "question": "Describe the image."})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bon.jsonl"
    assert main(["bon", "--prompts", str(prompts), "--policy", str(policy_path), "--reference", str(tiny_llava),
                 "--out", str(out), "--n", "3", "--beta", "0.5", "--max-new-tokens", "5", "--temperature", "1.0",
                 "--run-seed", "7", "--batch-size", "1", "--no-length-normalize", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage"] == "bon" and summary["written"] == 2
    records = list(read_records(out))
    assert [r["id"] for r in records] == ["q0", "q1"]
    for r in records:
        assert len(r["candidates"]) == 3 and r["beta"] == 0.5 and r["length_normalize"] is False
        assert r["picked_index"] == r["picked_index_unnormalized"]
        assert r["candidates"][0]["reward"] == pytest.approx(r["candidates"][0]["reward_unnormalized"], abs=1e-5)
    report = json.loads((tmp_path / "bon.report.json").read_text())
    assert report["prompts"] == 2 and report["n"] == 3
    with pytest.raises(SystemExit):
        main(["bon", "--help"])
    text = capsys.readouterr().out
    for option in ("--policy", "--reference", "--n", "--beta", "--no-length-normalize", "--temperature",
                   "--max-new-tokens", "--run-seed", "--batch-size", "--engine", "--score-batch-size", "--shard"):
        assert option in text
