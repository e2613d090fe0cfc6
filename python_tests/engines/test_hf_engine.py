"""HFEngine (transformers) and yes/no token sets, on the tiny offline LLaVA and Llama."""

from __future__ import annotations

import inspect

import pytest
import torch
from fixtures_tiny import make_images, png_bytes

from rlaifv_fast.engines.base import (
    NO_WORDS,
    YES_NO_SUFFIX,
    YES_WORDS,
    DecodingConfig,
    Engine,
    SampleRequest,
    YesNoRequest,
)
from rlaifv_fast.engines.hf import HFEngine, _PerRowSampler
from rlaifv_fast.engines.token_sets import resolve_token_ids
from rlaifv_fast.seeds import candidate_seed

QUESTIONS = [
    "Is there a red circle?",
    "Is there a blue square in the image?",
    "Is the triangle green?",
    "Are there two dogs on the left?",
    "Is the background black?",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def engine(tiny_llava):
    return HFEngine(tiny_llava, batch_size=8)


@pytest.fixture(scope="module")
def engine_b1(tiny_llava):
    return HFEngine(tiny_llava, batch_size=1)


@pytest.fixture(scope="module")
def text_engine(tiny_llama):
    return HFEngine(tiny_llama, batch_size=4)


def _reference(engine: HFEngine, req: YesNoRequest, yes_ids, no_ids) -> tuple[float, float]:
    """Direct full forward: full (1, T, V) logits, log_softmax over the full vocabulary at the last position."""
    prompt = engine.render(req.question + YES_NO_SUFFIX, image=req.image is not None)
    if engine.multimodal:
        kwargs = {"images": [req.image]} if req.image is not None else {}
        enc = engine.processor(text=[prompt], return_tensors="pt", **kwargs)
    else:
        enc = engine.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logp = engine.model(**enc).logits[0, -1].double().log_softmax(-1)
    return logp[yes_ids].logsumexp(0).item(), logp[no_ids].logsumexp(0).item()


def _mixed_requests(imgs):
    reqs = [YesNoRequest(f"img{i}-q{j}", q, im) for i, im in enumerate(imgs) for j, q in enumerate(QUESTIONS)]
    reqs.insert(3, YesNoRequest("lonely", "Is there a cat?", make_images(1, seed=7)[0]))  # a group of one
    reqs.append(YesNoRequest("text-0", "Is the sky blue?", None))
    reqs.append(YesNoRequest("text-1", "Is grass green?", None))
    # interleave images so that input order differs from grouping order
    return reqs[::2] + reqs[1::2]


# ------------------------------------------------------------------------------------------------ construction
def test_engine_protocol_and_defaults(engine):
    assert isinstance(engine, Engine)
    assert engine.multimodal and engine.model_name == "tiny-llava"
    params = inspect.signature(HFEngine).parameters
    assert params["trust_remote_code"].default is False
    assert params["local_files_only"].default is True
    assert params["device"].default == "cpu"
    assert engine.render("Describe the image.", image=True) == "USER: <image>\nDescribe the image. ASSISTANT:"
    assert engine.render("Split it.", image=False) == "USER: Split it. ASSISTANT:"


def test_missing_model_raises_without_network(tmp_path):
    with pytest.raises((OSError, ValueError)):
        HFEngine(tmp_path / "no-such-model")


# ------------------------------------------------------------------------------------------------ token sets
def test_token_sets_word_level(engine):
    tok = engine.tokenizer
    yes = resolve_token_ids(tok, YES_WORDS)
    no = resolve_token_ids(engine.processor, NO_WORDS)  # a processor is unwrapped
    assert yes == [tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("Yes")]
    assert no == [tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("No")]
    assert resolve_token_ids(tok, ["yes", "yes", "zebra"]) == yes[:1]  # deduplicated, unknown dropped
    assert resolve_token_ids(tok, ["Yes"], context="USER: Is it red? ASSISTANT:") == yes[1:]
    with pytest.raises(ValueError, match="zebra.*giraffe"):
        resolve_token_ids(tok, ["zebra", "giraffe"])
    with pytest.raises(ValueError):
        resolve_token_ids(tok, [""])
    assert engine.token_sets() == (yes, no)


def _trained_tokenizer(pre_tokenizer, decoder):
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"], show_progress=False)
    corpus = ["Is it red? yes. Is it blue? no. Yes it is. No it is not. yes no Yes No"] * 20 + ["yes", "no"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_token_sets_byte_level_includes_leading_space_variant():
    from tokenizers import decoders, pre_tokenizers

    tok = _trained_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    vocab = tok.get_vocab()
    assert {"yes", "Ġyes", "Yes", "ĠYes"} <= set(vocab)
    assert resolve_token_ids(tok, YES_WORDS) == [vocab["yes"], vocab["Ġyes"], vocab["Yes"], vocab["ĠYes"]]
    no = resolve_token_ids(tok, NO_WORDS)
    assert vocab["no"] in no and vocab["Ġno"] in no


def test_token_sets_sentencepiece_style_uses_leading_space_piece():
    from tokenizers import decoders, pre_tokenizers

    tok = _trained_tokenizer(
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), decoders.Metaspace(replacement="▁")
    )
    vocab = tok.get_vocab()
    assert "▁yes" in vocab
    assert resolve_token_ids(tok, ["yes"]) == [vocab["▁yes"]]


# ------------------------------------------------------------------------------------------------ yes / no
def test_yes_no_shared_plain_and_reference_agree(engine, images):
    reqs = _mixed_requests(images)
    calls = []
    plain = engine._last_logits_plain
    engine._last_logits_plain = lambda *a, **k: (calls.append(1), plain(*a, **k))[1]
    try:
        shared = engine.yes_no(reqs)
    finally:
        del engine._last_logits_plain
    assert not calls  # every group took the prefix-shared path
    baseline = engine.yes_no(reqs, share_prefix=False)
    assert [r.request_id for r in shared] == [r.request_id for r in reqs]
    assert [r.request_id for r in baseline] == [r.request_id for r in reqs]
    yes_ids, no_ids = engine.token_sets()
    for req, s, b in zip(reqs, shared, baseline):
        ref_yes, ref_no = _reference(engine, req, yes_ids, no_ids)
        assert abs(s.logp_yes - b.logp_yes) < TOL and abs(s.logp_no - b.logp_no) < TOL, req.request_id
        assert abs(s.logp_yes - ref_yes) < TOL and abs(s.logp_no - ref_no) < TOL, req.request_id
        assert s.logp_yes < 0 and s.logp_no < 0
        assert s.accepted == (s.logp_yes > s.logp_no)
    # the answers depend on the image and the question
    values = {round(r.logp_yes, 6) for r in shared}
    assert len(values) > len(reqs) // 2


def test_yes_no_batch_size_and_custom_words(engine_b1, engine, images):
    reqs = _mixed_requests(images[:2])
    a = engine.yes_no(reqs)
    b = engine_b1.yes_no(reqs)
    for x, y in zip(a, b):
        assert abs(x.logp_yes - y.logp_yes) < TOL and abs(x.logp_no - y.logp_no) < TOL
    only_lower = engine.yes_no(reqs[:3], yes_words=["yes"], no_words=["no"])
    for x, y in zip(only_lower, a[:3]):
        assert x.logp_yes <= y.logp_yes + 1e-7
    with pytest.raises(ValueError, match="share token ids"):
        engine.yes_no(reqs[:1], yes_words=["yes"], no_words=["yes", "no"])
    assert engine.yes_no([]) == []


def test_yes_no_image_forms_identical(engine, images, tmp_path):
    image = images[1]
    path = tmp_path / "img.png"
    data = png_bytes(image)
    path.write_bytes(data)
    forms = [image, str(path), path, data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}]
    results = [engine.yes_no([YesNoRequest(f"q{j}", q, form) for j, q in enumerate(QUESTIONS)]) for form in forms]
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert abs(x.logp_yes - y.logp_yes) < 1e-6 and abs(x.logp_no - y.logp_no) < 1e-6
    # two different inputs of the same image in one call agree too
    mixed = engine.yes_no([YesNoRequest("a", QUESTIONS[0], image), YesNoRequest("b", QUESTIONS[0], data)])
    assert abs(mixed[0].logp_yes - mixed[1].logp_yes) < 1e-6


def test_group_encoding_matches_processor(engine, images):
    texts = [engine.render(q + YES_NO_SUFFIX, image=True) for q in QUESTIONS]
    ids, mms = engine._encode_group(texts, images[0])
    for text, got, mm in zip(texts, ids, mms):
        enc = engine.processor(text=[text], images=[images[0]], return_tensors="pt")
        assert got == enc["input_ids"][0].tolist()
        assert torch.equal(mm["pixel_values"], enc["pixel_values"])


def test_collate_left_pads_per_token_inputs(engine):
    pix = [torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)]
    mms = [{"pixel_values": pix[0], "mm_token_type_ids": torch.tensor([[0, 1, 1]])}, None,
           {"pixel_values": pix[1], "mm_token_type_ids": torch.tensor([[1, 0]])}]
    batch = engine._collate_left([[5, 6, 7], [8], [9, 10]], mms)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0], [0, 1, 0]]
    assert torch.equal(batch["pixel_values"], torch.cat(pix))


@pytest.mark.parametrize("key", ["llava_next", "smolvlm"])
def test_image_inputs_collate_as_the_processor_batches(key, tmp_path):
    """Images with different crop / tile counts, processed one by one and collated, equal the processor's own
    batch of them (LLaVA-NeXT pads crops, SmolVLM pads images and their pixel_attention_mask, with zeros); another
    model type with such shapes is an error naming the input, not a silent padding."""
    from transformers import AutoProcessor

    from rlaifv_fast.engines.hf import collate_image_inputs
    from rlaifv_fast.testing.families import FAMILIES

    fam = FAMILIES[key]
    processor = AutoProcessor.from_pretrained(fam.build(tmp_path / "model", seed=0))
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}],
                                           add_generation_prompt=True)
    images = make_images(3, seed=3)
    nested = key != "llava_next"  # Idefics3-style processors take a list of images per text
    singles = [processor(text=[prompt], images=[[im]] if nested else [im], return_tensors="pt") for im in images]
    batch = processor(text=[prompt] * 3, images=[[im] for im in images] if nested else images, return_tensors="pt",
                      padding=True)
    mms = [{k: v for k, v in s.items() if k not in ("input_ids", "attention_mask")} for s in singles]
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert len({m["pixel_values"].shape for m in mms}) > 1  # different crop / tile counts
    got = collate_image_inputs(mms, lengths, max(lengths), left=True, model_type=fam.model_type)
    assert sorted(got) == sorted(mms[0])
    for k, v in got.items():
        assert torch.equal(v, batch[k]), k
    with pytest.raises(ValueError, match="pixel_values"):
        collate_image_inputs(mms, lengths, max(lengths), left=True, model_type="llava")


def test_text_only_engine(text_engine):
    assert not text_engine.multimodal and isinstance(text_engine, Engine)
    reqs = [YesNoRequest(f"t{j}", q) for j, q in enumerate(QUESTIONS + ["Is it?"])]
    shared = text_engine.yes_no(reqs)
    plain = text_engine.yes_no(reqs, share_prefix=False)
    yes_ids, no_ids = text_engine.token_sets()
    for req, s, p in zip(reqs, shared, plain):
        ry, rn = _reference(text_engine, req, yes_ids, no_ids)
        assert abs(s.logp_yes - p.logp_yes) < TOL and abs(s.logp_yes - ry) < TOL and abs(s.logp_no - rn) < TOL
    out = text_engine.sample([SampleRequest("a", "Describe it.")], 2, DecodingConfig(max_new_tokens=5), run_seed=0)
    assert [s.index for s in out[0]] == [0, 1]
    assert len(text_engine.generate(["Split it.", "Hi"], max_new_tokens=4)) == 2
    with pytest.raises(ValueError, match="text-only"):
        text_engine.yes_no([YesNoRequest("x", "Is it red?", make_images(1)[0])])


# ------------------------------------------------------------------------------------------------ sampling
def _sample_requests(imgs):
    return [
        SampleRequest("r0", "Describe the image.", imgs[0]),
        SampleRequest("r1", "What is in the picture? Describe it in detail please.", imgs[1]),
        SampleRequest("r2", "Describe the image briefly.", None),
        SampleRequest("r3", "Is there a red circle in the image?", imgs[2]),
    ]


@pytest.fixture()
def eos_boost(engine, engine_b1):
    """Make end-of-sequence likely (so rows finish at different steps and get padded) on both engines."""
    handles = []
    for eng in (engine, engine_b1):
        eos = eng.tokenizer.eos_token_id

        def hook(module, inputs, output, eos=eos):
            output = output.clone()
            output[..., eos] += 2.0
            return output

        handles.append(eng.model.get_output_embeddings().register_forward_hook(hook))
    yield
    for h in handles:
        h.remove()


def test_sample_n_order_and_seeds(engine, images, eos_boost):
    reqs = _sample_requests(images)
    decoding = DecodingConfig(temperature=0.7, max_new_tokens=24)
    out = engine.sample(reqs, 3, decoding, run_seed=11)
    assert len(out) == len(reqs)
    eos = engine.tokenizer.eos_token
    reasons = set()
    for req, cands in zip(reqs, out):
        assert [c.index for c in cands] == [0, 1, 2]
        for c in cands:
            assert c.request_id == req.request_id
            assert c.seed == candidate_seed(11, req.request_id, c.index)
            assert 1 <= c.num_tokens <= 24 and eos not in c.text
            assert c.finish_reason in ("stop", "length")
            assert c.finish_reason == "stop" or c.num_tokens == 24
            reasons.add(c.finish_reason)
    assert reasons == {"stop", "length"}


def test_sample_candidate_alone_equals_batched(engine, engine_b1, images, eos_boost):
    reqs = _sample_requests(images)
    decoding = DecodingConfig(temperature=1.0, max_new_tokens=16, top_k=40, top_p=0.95, repetition_penalty=1.1)
    batched = engine.sample(reqs, 3, decoding, run_seed=5)
    alone = engine_b1.sample(reqs, 3, decoding, run_seed=5)  # every candidate in a batch of one
    assert batched == alone
    # a single candidate requested on its own (another request, another batch) is the same too
    single = engine.sample([reqs[1]], 2, decoding, run_seed=5)[0]
    assert single == batched[1][:2]


def test_sample_seeds_change_candidates(engine, images):
    reqs = _sample_requests(images)[:2]
    decoding = DecodingConfig(temperature=0.7, max_new_tokens=12)
    a = engine.sample(reqs, 3, decoding, run_seed=1)
    b = engine.sample(reqs, 3, decoding, run_seed=2)
    again = engine.sample(reqs, 3, decoding, run_seed=1)
    assert a == again
    texts_a = [c.text for row in a for c in row]
    texts_b = [c.text for row in b for c in row]
    assert sum(x != y for x, y in zip(texts_a, texts_b)) >= 4
    assert len(set(c.text for c in a[0])) > 1  # candidates of one prompt differ by seed
    with pytest.raises(ValueError):
        engine.sample(reqs, 0, decoding, run_seed=1)


def test_a_sampled_special_token_is_scored_as_sampled(text_engine):
    """The answer's first token is a special token (<s>), then "red", then the end token: the stored text keeps <s>
    and leaves out only the end token, so scoring re-tokenizes exactly the sampled tokens (+ the end token it
    appends). Decoding with skip_special_tokens drops <s>: the scored sequence would be "red" + end."""
    from rlaifv_fast.pipeline.scoring import encode_triples

    tok = text_engine.tokenizer
    forced = [tok.bos_token_id, tok.convert_tokens_to_ids("red"), tok.eos_token_id]
    step = []

    def hook(module, inputs, output):  # the head's output at each generation step: force that step's token
        output = output.clone()
        output[:, -1, forced[min(len(step), 2)]] += 1e4
        step.append(1)
        return output

    handle = text_engine.model.get_output_embeddings().register_forward_hook(hook)
    try:
        greedy = text_engine.greedy([SampleRequest("g", "Describe the image.")], max_new_tokens=5)[0]
        step.clear()
        sampled = text_engine.sample([SampleRequest("s", "Describe the image.")], 1,
                                     DecodingConfig(temperature=1.0, max_new_tokens=5), run_seed=3)[0][0]
    finally:
        handle.remove()
    for s in (greedy, sampled):
        assert (s.num_tokens, s.finish_reason) == (3, "stop")
        assert tok(s.text, add_special_tokens=False)["input_ids"] == forced[:2]
        (enc,) = encode_triples(text_engine, [(None, "Describe the image.", s.text)])
        assert enc.input_ids[enc.prompt_len :] == forced


def test_warp_matches_transformers():
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    input_ids = torch.randint(0, 50, (3, 9))
    d = DecodingConfig(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    ours = _PerRowSampler([1, 2, 3], [0, 0, 0], d, torch.device("cpu")).warp(input_ids, scores)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(input_ids, scores.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        ref = warper(input_ids, ref)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    assert torch.allclose(ours[torch.isfinite(ours)], ref[torch.isfinite(ref)], atol=1e-6)
    # left padding is excluded from the repetition penalty
    padded = torch.cat([torch.full((3, 4), 7), input_ids], dim=1)
    again = _PerRowSampler([1, 2, 3], [4, 4, 4], d, torch.device("cpu")).warp(padded, scores)
    assert torch.equal(again, ours)


# ------------------------------------------------------------------------------------------------ greedy generate
def test_generate_greedy_order_and_batch_invariance(engine, engine_b1):
    prompts = ["Split the answer into claims.", "Hi", "Rewrite each claim as a question please."]
    a = engine.generate(prompts, max_new_tokens=10)
    b = engine_b1.generate(prompts, max_new_tokens=10)
    assert a == b and len(a) == 3 and all(isinstance(t, str) for t in a)
    assert engine.generate(prompts[1:2], max_new_tokens=10) == a[1:2]


def test_model_folders_fail_early_and_pickle_weights_need_consent(tiny_llama, tmp_path):
    import shutil

    from rlaifv_fast.engines import make_engine

    with pytest.raises(FileNotFoundError, match=r"model folder .*nowhere does not exist"):
        make_engine("hf", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        make_engine("hf", str(tmp_path / "empty"))
    # the same model with its weights as a pickle file: refused unless the user vouches for the folder
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder)
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle_weights=true"):
        make_engine("hf", str(folder))
    engine = make_engine("hf", str(folder), options={"allow_pickle_weights": True})
    assert engine.generate(["Describe the dog."], max_new_tokens=3) == make_engine("hf", str(tiny_llama)).generate(
        ["Describe the dog."], max_new_tokens=3)


def test_a_vision_model_without_its_processor_is_named(tiny_llava, tmp_path):
    import shutil

    from rlaifv_fast.engines import make_engine

    folder = tmp_path / "no-processor"
    shutil.copytree(tiny_llava, folder)
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (folder / name).exists():
            (folder / name).unlink()
    with pytest.raises(ValueError, match=r"vision-language model \(llava\) but processor_config.json"):
        make_engine("hf", str(folder))
