"""The shapes world: determinism, split disjointness, visible rendering, exact descriptions, controlled bias, QA."""

import dataclasses

import numpy as np
import pytest

from rlaifv_fast.shapes import (
    PALETTE,
    ShapesWorldConfig,
    biased_description,
    describe,
    make_scene,
    make_split,
    mentioned_objects,
    polar_questions,
    question,
    render,
)

CFG = ShapesWorldConfig(seed=3, n_train=300, n_heldout=100)


def test_split_is_deterministic_per_seed_and_index():
    a = make_split(CFG, "train")
    b = make_split(CFG, "train")
    assert a == b
    assert make_scene(CFG, "train", 17) == a[17]
    other = make_split(dataclasses.replace(CFG, seed=4), "train")
    assert sum(x == y for x, y in zip(a, other)) == 0


def test_splits_are_disjoint_and_sizes_match():
    train = make_split(CFG, "train")
    held = make_split(CFG, "heldout")
    assert len(train) == 300 and len(held) == 100
    assert not {s.objects for s in train} & {s.objects for s in held}
    with pytest.raises(ValueError):
        make_split(CFG, "test")


def test_scenes_respect_config():
    counts = set()
    for s in make_split(CFG, "train"):
        counts.add(len(s.objects))
        assert len(s.truth()) == len(s.objects)  # distinct (colour, shape) objects
        for i, o in enumerate(s.objects):
            x0, y0, x1, y1 = o.bbox
            assert x1 - x0 == y1 - y0 and CFG.min_size <= x1 - x0 <= CFG.max_size
            assert 0 <= x0 and 0 <= y0 and x1 <= CFG.image_size and y1 <= CFG.image_size
            for p in s.objects[i + 1 :]:
                assert x1 <= p.bbox[0] or p.bbox[2] <= x0 or y1 <= p.bbox[1] or p.bbox[3] <= y0
    assert counts == {1, 2, 3, 4}


def test_render_draws_visible_objects_in_their_boxes():
    min_fill = {"square": 0.95, "circle": 0.7, "triangle": 0.4}
    for s in make_split(CFG, "heldout")[:60]:
        img = np.asarray(render(s, CFG))
        assert img.shape == (CFG.image_size, CFG.image_size, 3)
        covered = np.zeros(img.shape[:2], bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            patch = img[y0:y1, x0:x1]
            frac = np.all(patch == PALETTE[o.colour], axis=-1).mean()
            assert frac >= min_fill[o.shape], (o, frac)
            assert tuple(img[(y0 + y1) // 2, (x0 + x1) // 2]) == PALETTE[o.colour]
            covered[y0:y1, x0:x1] = True
        assert np.all(img[~covered] == CFG.background)
        assert render(s, CFG).tobytes() == render(s, CFG).tobytes()


def test_describe_lists_objects_left_to_right_and_round_trips():
    for s in make_split(CFG, "train")[:200]:
        text = describe(s)
        by_obj = {(o.colour, o.shape): o.bbox for o in s.objects}
        mentions = mentioned_objects(text)
        assert mentions == [(o.colour, o.shape) for o in s.left_to_right()]
        centres = [by_obj[m][0] + by_obj[m][2] for m in mentions]
        assert centres == sorted(centres) and set(mentions) == s.truth()
        assert text.count("there is") == len(s.objects) and text.endswith(" .")
    s = make_scene(CFG, "train", 0)
    assert describe(s) == " ".join(f"there is a {o.colour} {o.shape} ." for o in s.left_to_right())


def test_mentioned_objects_is_robust():
    assert mentioned_objects("A Red Circle, and two BLUE squares! An orange triangle?") == [
        ("red", "circle"),
        ("blue", "square"),
    ]  # orange is not in the default vocabulary
    cfg = ShapesWorldConfig(colours=("red", "orange"), cooccurrence={})
    assert mentioned_objects("an orange triangle.red circles", cfg) == [("orange", "triangle"), ("red", "circle")]
    assert mentioned_objects("red red circle circle") == [("red", "circle")]
    assert mentioned_objects("there is a circle that is red") == []
    assert mentioned_objects("") == []


def test_biased_description_rate_is_controlled():
    cfg = ShapesWorldConfig(seed=1, n_train=4000, hallucination_rate=0.3)
    rng = np.random.default_rng(0)
    applicable = added = 0
    for s in make_split(cfg, "train"):
        text = biased_description(s, rng, cfg)
        truth = s.truth()
        ref = mentioned_objects(describe(s))
        got = mentioned_objects(text)
        extra = [m for m in got if m not in truth]
        targets = {cfg.cooccurrence[o] for o in truth if o in cfg.cooccurrence} - truth
        assert set(extra) <= targets and len(extra) == len(set(extra))
        assert [m for m in got if m in truth] == ref  # the true objects are all still there, in order
        for t in targets:
            applicable += 1
            added += t in extra
            if t in extra:  # named right after its trigger
                trig = next(o for o in got[: got.index(t)][::-1] if cfg.cooccurrence.get(o) == t)
                assert got[got.index(t) - 1] == trig
    assert applicable > 1000
    se = (0.3 * 0.7 / applicable) ** 0.5
    assert abs(added / applicable - 0.3) < 4 * se
    # rate 0 reproduces the reference; rate 1 always adds
    c0 = dataclasses.replace(cfg, hallucination_rate=0.0)
    assert all(biased_description(s, rng, c0) == describe(s) for s in make_split(c0, "train")[:300])
    c1 = dataclasses.replace(cfg, hallucination_rate=1.0)
    for s in make_split(c1, "train")[:300]:
        truth = s.truth()
        targets = {c1.cooccurrence[o] for o in truth if o in c1.cooccurrence} - truth
        assert set(mentioned_objects(biased_description(s, rng, c1))) == truth | targets


def test_polar_questions_balanced_correct_and_hard():
    rng = np.random.default_rng(5)
    n_yes = n_no = n_hard = 0
    for s in make_split(CFG, "heldout"):
        truth = s.truth()
        qa = polar_questions(s, rng, 8, CFG, hard_fraction=1.0)
        assert len(qa) == 8
        for q, a in qa:
            (obj,) = mentioned_objects(q)
            assert q == question(*obj)
            assert a == ("yes" if obj in truth else "no")
            if a == "no":
                n_hard += any(obj[0] == t[0] or obj[1] == t[1] for t in truth)
        n_yes += sum(a == "yes" for _, a in qa)
        n_no += sum(a == "no" for _, a in qa)
        qa2 = polar_questions(s, np.random.default_rng(1), 6, CFG)
        assert sum(a == "yes" for _, a in qa2) == 3
        assert qa2 == polar_questions(s, np.random.default_rng(1), 6, CFG)
    assert n_yes == n_no == 400
    assert n_hard == n_no  # hard negatives always exist in the default vocabulary
    odd = [sum(a == "yes" for _, a in polar_questions(s, rng, 5, CFG)) for s in make_split(CFG, "train")[:200]]
    assert set(odd) == {2, 3} and 70 < sum(o == 3 for o in odd) < 130


def test_config_validation():
    with pytest.raises(ValueError):
        ShapesWorldConfig(colours=("red", "magenta"))
    with pytest.raises(ValueError):
        ShapesWorldConfig(min_size=4)
    with pytest.raises(ValueError):
        ShapesWorldConfig(cooccurrence={("red", "circle"): ("pink", "square")})
    with pytest.raises(ValueError):
        ShapesWorldConfig(hallucination_rate=1.5)
    with pytest.raises(ValueError):
        ShapesWorldConfig(max_size=40)
