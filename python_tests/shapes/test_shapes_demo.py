"""The shapes-world demo's parts: the grid world, the task formats the pipeline round-trips, the holistic divider and
mixed-decoding ablations, the SFT trainer, and an end-to-end `rlaifv-fast demo` run on the shipped checkpoints."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from rlaifv_fast.pipeline.divide import HOLISTIC_QUESTION, HolisticDivider, RuleDivider
from rlaifv_fast.engines.base import YES_NO_SUFFIX, DecodingConfig
from rlaifv_fast.shapes import ShapesWorldConfig, make_scene, mentioned_objects, render
from rlaifv_fast.shapes import tasks
from rlaifv_fast.shapes.sft import SFTConfig, demo_world, single_share, train_sft
from rlaifv_fast.shapes.world import biased_objects

WORLD = demo_world(n_train=60, n_heldout=12)


def test_grid_layout_one_object_per_cell_inside_its_cell():
    cell = WORLD.image_size // WORLD.grid
    for i in range(200):
        scene = make_scene(WORLD, "train", i)
        cells = [(o.bbox[0] // cell, o.bbox[1] // cell) for o in scene.objects]
        assert len(set(cells)) == len(cells)
        for o, (cx, cy) in zip(scene.objects, cells):
            x0, y0, x1, y1 = o.bbox
            assert (x1 - 1) // cell == cx and (y1 - 1) // cell == cy  # the whole object inside its cell
            assert WORLD.min_size <= x1 - x0 <= WORLD.max_size
        order = [(o.bbox[1] // cell, o.bbox[0] // cell) for o in scene.left_to_right()]
        assert order == sorted(order)  # reading order, independent of jitter
        img = np.asarray(render(scene, WORLD))
        assert (img.reshape(-1, 3).any(axis=1)).sum() > 0


def test_grid_config_validation():
    with pytest.raises(ValueError, match="grid cells"):
        demo_world(max_objects=5)
    with pytest.raises(ValueError, match="grid cell"):
        demo_world(max_size=33)
    with pytest.raises(ValueError, match="layout"):
        demo_world(layout="hex")


def test_task_formats_round_trip_through_the_rule_divider():
    """The labeler is trained on exactly the questions the pipeline asks: rule-divided description sentences."""
    for i in range(30):
        scene = make_scene(WORLD, "train", i)
        objs = tasks.reference_objects(scene)
        text = tasks.description_text(objs)
        assert mentioned_objects(text, WORLD) == objs
        (division,) = RuleDivider().divide([text])
        assert [q + YES_NO_SUFFIX for q in division.questions] == [tasks.polar_prompt(o) for o in objs]


def test_polar_examples_are_balanced_correct_and_ask_absent_partners():
    rng = np.random.default_rng(0)
    for i in range(60):
        scene = make_scene(WORLD, "train", i)
        qa = tasks.polar_examples(scene, rng, 4, WORLD)
        assert sum(a == "yes" for _, a in qa) == 2
        for prompt, answer in qa:
            (obj,) = mentioned_objects(prompt, WORLD)
            assert (obj in scene.truth()) == (answer == "yes")
        partners = {WORLD.cooccurrence[o] for o in scene.truth() if o in WORLD.cooccurrence} - scene.truth()
        asked_no = {mentioned_objects(p, WORLD)[0] for p, a in qa if a == "no"}
        assert sorted(partners)[:2] == sorted(partners & asked_no)[:2]


def test_holistic_examples_and_divider():
    rng = np.random.default_rng(1)
    scene = make_scene(WORLD, "train", 3)
    (good, yes), (bad, no) = tasks.holistic_examples(scene, rng, WORLD)
    assert (yes, no) == ("yes", "no")
    assert set(mentioned_objects(good, WORLD)) == scene.truth()
    assert set(mentioned_objects(bad, WORLD)) - scene.truth()
    (d,) = HolisticDivider().divide(["There is a red circle.  There is a blue square."])
    assert d.claims == ("There is a red circle. There is a blue square.",)
    assert d.questions == (f"{HOLISTIC_QUESTION} There is a red circle. There is a blue square.",)
    assert HolisticDivider().divide([" "])[0].questions == ()
    with pytest.raises(ValueError):
        HolisticDivider("  ")


def test_biased_objects_rate_and_order():
    world = demo_world(hallucination_rate=0.7)
    rng = np.random.default_rng(2)
    hits = trials = 0
    for i in range(600):
        scene = make_scene(world, "train", i)
        objs = biased_objects(scene, rng, world)
        truth = scene.truth()
        assert [o for o in objs if o in truth] == tasks.reference_objects(scene)
        for o in tasks.reference_objects(scene):
            partner = world.cooccurrence.get(o)
            if partner is not None and partner not in truth:
                trials += 1
                hits += partner in objs and objs[objs.index(o) + 1] == partner
    assert trials > 100 and abs(hits / trials - 0.7) < 0.08


def test_curriculum_share():
    c = SFTConfig(warmup_steps=100, single_share_final=0.1)
    assert single_share(c, 0) == single_share(c, 99) == 1.0
    assert single_share(c, 150) == pytest.approx(0.55)
    assert single_share(c, 1000) == pytest.approx(0.1)


def test_sft_trains_and_saves_a_pipeline_loadable_model(tmp_path):
    from rlaifv_fast.engines.hf import HFEngine

    config = SFTConfig(role="labeler", out_dir=str(tmp_path / "labeler"), world=WORLD, hidden_size=64,
                       text_layers=1, vision_layers=1, steps=40, batch_size=16, warmup_steps=10, n_single=20,
                       eval_every=20, lr=3e-3)
    report = train_sft(config, progress=False)
    assert [h["step"] for h in report["history"]] == [20, 40]
    assert report["history"][-1]["loss"] < 4.0  # from ~ln(V) = 5.6 at init
    engine = HFEngine(tmp_path / "labeler")
    (res,) = engine.yes_no([__import__("rlaifv_fast").engines.base.YesNoRequest(
        "q", "Is there a red circle?", render(make_scene(WORLD, "heldout", 0), WORLD))])
    assert np.isfinite(res.logp_yes) and np.isfinite(res.logp_no)
    saved = json.loads((tmp_path / "labeler" / "sft_report.json").read_text())
    assert saved["config"]["world"]["layout"] == "grid"
    assert not list(tmp_path.glob(".labeler.*"))  # the temporary folder was renamed into place


def test_mixed_decodings_split_candidates_and_keep_indices(tiny_llava, tmp_path):
    from rlaifv_fast.pipeline.data import Prompt
    from rlaifv_fast.engines.hf import HFEngine
    from rlaifv_fast.pipeline import generate
    from rlaifv_fast.pipeline.generate import GenerateConfig
    from rlaifv_fast.pipeline.store import read_records

    image = render(make_scene(WORLD, "train", 0), WORLD)
    path = tmp_path / "img.png"
    image.save(path)
    prompts = [Prompt("p0", "Describe the image.", str(path))]
    engine = HFEngine(tiny_llava)
    low, high = DecodingConfig(temperature=0.3, max_new_tokens=6), DecodingConfig(temperature=1.5, max_new_tokens=6)
    config = GenerateConfig(n=5, mixed_decodings=(low, high), batch_size=1)
    assert [idx for _, idx in config.settings()] == [[0, 2, 4], [1, 3]]
    generate.run(prompts, tmp_path / "c.jsonl", config, engines={"policy": engine}, progress=False)
    records = list(read_records(tmp_path / "c.jsonl"))
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["decoding"]["temperature"] for r in records] == [0.3, 1.5, 0.3, 1.5, 0.3]
    assert len({r["seed"] for r in records}) == 5
    # the first setting's candidates are exactly an unmixed run's with that setting (same seed stream)
    plain_config = dataclasses.replace(config, mixed_decodings=(), decoding=low, n=3)
    generate.run(prompts, tmp_path / "d.jsonl", plain_config, engines={"policy": engine}, progress=False)
    plain = list(read_records(tmp_path / "d.jsonl"))
    assert [r["text"] for r in records[::2]] == [r["text"] for r in plain]


def _demo(work, *extra):
    import subprocess
    import sys

    # a work folder relative to the current directory, as the README's `rlaifv-fast demo` uses its default
    cmd = [sys.executable, "-m", "rlaifv_fast.cli", "demo", "--work-dir", work.name, "--iterations", "1",
           "--n-prompts", "6", "--n-candidates", "4", "--eval-images", "6", "--eval-samples", "2", "--bon-n", "2",
           "--epochs", "1", "--threads", "1", "--no-progress", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=work.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads((work / "report.json").read_text())


def test_demo_end_to_end_on_the_shipped_checkpoints_is_reproducible(tmp_path):
    stdout, report = _demo(tmp_path / "a", "--ablations", "holistic")
    names = [r["name"] for r in report["rows"]]
    assert names == ["SFT policy", "iteration 1", "ablation: holistic", "Best-of-2 (final policy)"]
    assert "CHAIRs" in stdout and "labeler held-out polar QA accuracy" in stdout
    assert (tmp_path / "a" / "report.png").stat().st_size > 1000
    for row in report["rows"][:3]:
        for mode in ("greedy", "sampled"):
            assert set(row[mode]) >= {"response_level", "object_level", "recall", "mean_length_words"}
    # the demo's own checks that do not need the full run: the shipped labeler is competent and agrees with the truth
    checks = report["checks"]
    assert checks["labeler_competent (QA accuracy >= 0.75)"] is True and report["labeler_qa"]["accuracy"] >= 0.9
    agreement = report["rows"][1]["labeler_agreement"]
    assert agreement["claims"] > 0 and agreement["agreement"] >= 0.9
    # the holistic ablation asked one question per answer
    from rlaifv_fast.pipeline.store import read_records

    feedback = list(read_records(tmp_path / "a" / "loop-holistic" / "iter0" / "feedback.jsonl"))
    assert feedback and all(r["divider"] == "holistic" and r["n_claims"] <= 1 for r in feedback)
    # same seed -> same table, in a fresh folder; a re-run in the same folder redoes nothing and agrees
    _, again = _demo(tmp_path / "b", "--ablations", "holistic")
    assert again["rows"] == report["rows"]
    _, rerun = _demo(tmp_path / "a", "--ablations", "holistic")
    assert rerun["rows"] == report["rows"]
