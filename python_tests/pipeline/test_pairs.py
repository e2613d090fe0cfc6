"""Stage 5 pairs: score gap, ties, identical texts, the seeded cap, zero-claim exclusion, length balancing."""

import dataclasses
import random

import pytest

from rlaifv_fast.pipeline.pairs import LENGTH_BALANCE_RS, PairConfig, PairReport, PreferencePair, ScoredCandidate, make_pairs


def cand(cid, pid, text, score, n_claims=3):
    return ScoredCandidate(candidate_id=cid, prompt_id=pid, text=text, score=score, n_claims=n_claims)


def words(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n))


NO_BALANCE = PairConfig(max_pairs_per_prompt=None, length_balance=False)


def ids(pairs):
    return [(p.prompt_id, p.chosen_id, p.rejected_id) for p in pairs]


# ---------------------------------------------------------------------------------------------------------- pair rules


def test_score_gap_and_higher_score_chosen():
    cs = [cand("a", "p", "alpha", 0.0), cand("b", "p", "beta", -0.5), cand("c", "p", "gamma", -1.0)]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert ids(pairs) == [("p", "a", "c")]  # gaps 0.5 (a,b) and 0.5 (b,c) are below 1
    p = pairs[0]
    assert (p.chosen, p.rejected, p.chosen_score, p.rejected_score) == ("alpha", "gamma", 0.0, -1.0)
    assert rep.below_gap == 2 and rep.ties == 0 and rep.pairs == 1


def test_gap_of_exactly_min_pairs_and_chosen_is_higher_whatever_the_order():
    cs = [cand("a", "p", "worse", -3.0), cand("b", "p", "better", -2.0)]
    pairs, _ = make_pairs(cs, NO_BALANCE)
    assert ids(pairs) == [("p", "b", "a")]


def test_custom_gap():
    cs = [cand("a", "p", "x y", 0.0), cand("b", "p", "x z", -1.0), cand("c", "p", "x w", -2.0)]
    pairs, rep = make_pairs(cs, PairConfig(max_pairs_per_prompt=None, min_score_gap=2.0, length_balance=False))
    assert ids(pairs) == [("p", "a", "c")] and rep.below_gap == 2


def test_ties_never_pair():
    cs = [cand(f"c{i}", "p", f"text {i}", -1.0) for i in range(4)]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert pairs == [] and rep.ties == 6 and rep.pairs == 0


def test_identical_texts_dropped_up_to_whitespace():
    cs = [
        cand("a", "p", "There is a cat.", 0.0),
        cand("b", "p", "  There is a\ncat. ", -2.0),
        cand("c", "p", "A dog.", -4.0),
    ]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert ids(pairs) == [("p", "a", "c"), ("p", "b", "c")]
    assert rep.identical_dropped == 1


def test_identical_dropped_before_the_cap():
    # a/b identical; the two real pairs both survive a cap of 2 (the cap never spends a slot on a dropped pair)
    cs = [cand("a", "p", "same", 0.0), cand("b", "p", "same", -1.0), cand("c", "p", "other", -2.0)]
    pairs, rep = make_pairs(cs, PairConfig(max_pairs_per_prompt=2, length_balance=False))
    assert ids(pairs) == [("p", "a", "c"), ("p", "b", "c")]
    assert rep.identical_dropped == 1 and rep.capped == 0


def test_zero_claim_candidates_excluded_and_counted():
    cs = [
        cand("a", "p", "no claims at all", 0.0, n_claims=0),  # best score, but only because nothing was checked
        cand("b", "p", "one", -1.0),
        cand("c", "p", "two", -3.0),
        cand("d", "q", "lonely", 0.0, n_claims=0),
    ]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert ids(pairs) == [("p", "b", "c")]
    assert rep.excluded_no_claims == 2 and rep.prompts == 2 and rep.candidates == 4


def test_groups_by_prompt_never_across():
    cs = [cand("a", "p", "x", 0.0), cand("b", "q", "y", -5.0)]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert pairs == [] and rep.prompts == 2


# ---------------------------------------------------------------------------------------------------------------- cap


def five(pid="p", tag=""):
    return [cand(f"{pid}{tag}-{i}", pid, f"answer {pid} {i}", -float(i)) for i in range(5)]  # 10 pairs


def test_cap_counts_and_keeps_valid_pairs():
    cs = five()
    all_pairs, _ = make_pairs(cs, NO_BALANCE)
    assert len(all_pairs) == 10
    pairs, rep = make_pairs(cs, PairConfig(max_pairs_per_prompt=2, length_balance=False))
    assert len(pairs) == 2 and rep.capped == 8
    assert set(ids(pairs)) <= set(ids(all_pairs))


def test_cap_is_seeded_and_deterministic():
    cs = five()
    cfg = PairConfig(max_pairs_per_prompt=2, seed=7, length_balance=False)
    assert make_pairs(cs, cfg) == make_pairs(cs, cfg)
    picks = {tuple(ids(make_pairs(cs, dataclasses.replace(cfg, seed=s))[0])) for s in range(20)}
    assert len(picks) > 1  # the seed matters


def test_cap_independent_of_input_order():
    cs = five("p") + five("q")
    cfg = PairConfig(max_pairs_per_prompt=3, seed=3, length_balance=False)
    expected = make_pairs(cs, cfg)
    rng = random.Random(0)
    for _ in range(10):
        shuffled = cs[:]
        rng.shuffle(shuffled)
        assert make_pairs(shuffled, cfg) == expected


def test_cap_of_one_prompt_independent_of_other_prompts():
    cfg = PairConfig(max_pairs_per_prompt=2, seed=1, length_balance=False)
    alone, _ = make_pairs(five("p"), cfg)
    together, _ = make_pairs(five("p") + five("q") + five("r"), cfg)
    assert [p for p in together if p.prompt_id == "p"] == alone


def test_default_config_caps_at_two():
    pairs, rep = make_pairs(five(), PairConfig(length_balance=False))
    assert len(pairs) == 2 and rep.capped == 8


# ------------------------------------------------------------------------------------------------- length balancing


def pair_prompt(pid, n_chosen, n_rejected):
    """One prompt, one pair: chosen has n_chosen words, rejected n_rejected."""
    return [cand(f"{pid}-c", pid, words(n_chosen, "c"), 0.0), cand(f"{pid}-r", pid, words(n_rejected, "r"), -1.0)]


def test_length_balance_hand_computed_r():
    # (chosen, rejected) word counts; ratio (Lr - Lc) / Lr:
    #   p1 (10, 10) 0.0   p2 (5, 10) 0.5   p3 (9, 10) 0.1   p4 (12, 10) chosen longer: always kept
    # r < 0.1 keeps p1, p4:            |22 - 20| / 20 = 0.1
    # 0.1 <= r < 0.5 keeps p1, p3, p4: |31 - 30| / 30 = 0.0333  <- best; smallest such r on the grid is 0.1
    # r >= 0.5 keeps all:              |36 - 40| / 40 = 0.1
    cs = pair_prompt("p1", 10, 10) + pair_prompt("p2", 5, 10) + pair_prompt("p3", 9, 10) + pair_prompt("p4", 12, 10)
    pairs, rep = make_pairs(cs, PairConfig())
    assert rep.length_balance_r == pytest.approx(0.1)
    assert [p.prompt_id for p in pairs] == ["p1", "p3", "p4"]
    assert rep.dropped_by_length_balance == 1 and rep.pairs == 3
    assert rep.mean_len_chosen_before == 9.0 and rep.mean_len_rejected_before == 10.0
    assert rep.mean_len_chosen_after == pytest.approx(31 / 3) and rep.mean_len_rejected_after == 10.0


def test_length_balance_ties_go_to_the_smallest_r():
    # p1 (11, 10) chosen longer; p2 (7, 10) ratio 0.3.
    # r < 0.3: |11 - 10| / 10 = 1/10;  r >= 0.3: |18 - 20| / 20 = 1/10: an exact tie -> r = 0, p2 dropped.
    cs = pair_prompt("p1", 11, 10) + pair_prompt("p2", 7, 10)
    pairs, rep = make_pairs(cs, PairConfig())
    assert rep.length_balance_r == 0.0
    assert [p.prompt_id for p in pairs] == ["p1"]


def test_chosen_longer_pairs_always_kept():
    # every r gives the same objective; r = 0 drops all rejected-longer pairs but none whose chosen is longer
    cs = pair_prompt("a", 20, 5) + pair_prompt("b", 30, 1) + pair_prompt("c", 8, 8)
    pairs, rep = make_pairs(cs, PairConfig())
    assert rep.length_balance_r == 0.0 and rep.dropped_by_length_balance == 0 and len(pairs) == 3


def test_length_balance_can_keep_everything():
    # p1 (20, 10), p2 (10, 19) ratio 9/19 = 0.47: r < 0.48 gives |20 - 10| / 10 = 1; r >= 0.48 gives |30 - 29| / 29
    cs = pair_prompt("p1", 20, 10) + pair_prompt("p2", 10, 19)
    pairs, rep = make_pairs(cs, PairConfig())
    assert rep.length_balance_r == pytest.approx(0.48) and len(pairs) == 2


def test_length_balance_grid():
    assert len(LENGTH_BALANCE_RS) == 50 and LENGTH_BALANCE_RS[0] == 0.0 and LENGTH_BALANCE_RS[-1] == 0.98
    assert LENGTH_BALANCE_RS[5] == 0.1  # exact: no accumulated float drift


def test_length_balance_off():
    cs = pair_prompt("p1", 1, 50) + pair_prompt("p2", 10, 10)
    pairs, rep = make_pairs(cs, PairConfig(length_balance=False))
    assert len(pairs) == 2 and rep.length_balance_r is None and rep.dropped_by_length_balance == 0
    assert rep.mean_len_chosen_after == rep.mean_len_chosen_before == 5.5


def test_length_balance_when_no_r_keeps_anything():
    # chosen empty, rejected 3 words: ratio 1 > 0.98, dropped by every r -> the most permissive r, nothing left
    cs = [cand("a", "p", "", 0.0), cand("b", "p", "one two three", -1.0)]
    pairs, rep = make_pairs(cs, PairConfig())
    assert pairs == [] and rep.length_balance_r == 0.98 and rep.dropped_by_length_balance == 1


# ------------------------------------------------------------------------------------------------------------- edges


def test_empty_input():
    pairs, rep = make_pairs([], PairConfig())
    assert pairs == []
    assert rep == PairReport(0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0.0, 0.0, 0.0, 0.0)


def test_one_candidate():
    pairs, rep = make_pairs([cand("a", "p", "x", 0.0)], PairConfig())
    assert pairs == [] and rep.prompts == 1 and rep.candidates == 1 and rep.length_balance_r is None


def test_empty_texts():
    cs = [cand("a", "p", "", 0.0), cand("b", "p", "", -1.0), cand("c", "p", "word", -2.0)]
    pairs, rep = make_pairs(cs, NO_BALANCE)
    assert rep.identical_dropped == 1  # "" vs ""
    assert ids(pairs) == [("p", "a", "c"), ("p", "b", "c")]
    # balanced: empty chosen vs 1-word rejected has ratio 1 and goes
    pairs, rep = make_pairs(cs, PairConfig(max_pairs_per_prompt=None))
    assert pairs == [] and rep.dropped_by_length_balance == 2


def test_empty_rejected_is_a_chosen_longer_pair():
    cs = [cand("a", "p", "some words", 0.0), cand("b", "p", "", -1.0)]
    pairs, rep = make_pairs(cs, PairConfig())
    assert len(pairs) == 1 and rep.length_balance_r == 0.98  # sum of rejected words is 0: no objective anywhere


def test_output_order_and_types():
    cs = five("z") + five("a") + five("m")
    pairs, _ = make_pairs(cs, NO_BALANCE)
    assert ids(pairs) == sorted(ids(pairs))
    assert all(isinstance(p, PreferencePair) and p.chosen_score > p.rejected_score for p in pairs)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([cand("a", "p", "x", 0.0), cand("a", "q", "y", -1.0)], "twice"),
        ([cand("a", "p", "x", float("nan"))], "non-finite"),
        ([cand("a", "p", "x", float("-inf"))], "non-finite"),
        ([cand("a", "p", "x", 0.0, n_claims=-1)], "n_claims"),
    ],
)
def test_bad_candidates(bad, match):
    with pytest.raises(ValueError, match=match):
        make_pairs(bad, PairConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_pairs_per_prompt=0),
        dict(min_score_gap=0.0),
        dict(min_score_gap=-1.0),
        dict(min_score_gap=float("inf")),
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        PairConfig(**kwargs)


def test_config_is_keyword_only():
    with pytest.raises(TypeError):
        PairConfig(2)  # type: ignore[misc]
