"""Stage 2 divide: the rule-based splitter and question converter, the LLM divider's parsing, chunking and reports.

The LLM divider is driven by a small scripted engine below (a test double for the Engine protocol: its `generate`
returns canned or echoed strings), which is all it takes to test the parsing and bookkeeping; real models are the
engines' own tests.
"""

import math

import pytest

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # the GPU machine may lack hypothesis
    given = None

from rlaifv_fast.pipeline.divide import (
    CLAIMS_PROMPT,
    QUESTION_PROMPT,
    Divider,
    Division,
    EngineOutputError,
    LLMDivider,
    LLMDividerConfig,
    RuleDivider,
    chunk_answer,
    claim_to_question_rule,
    parse_claims,
    parse_question,
    split_claims_rule,
    split_sentences,
)

# ------------------------------------------------------------------------------------------------ rule-based splitting


@pytest.mark.parametrize(
    "answer, claims",
    [
        ("There is a red circle and a blue square.", ["There is a red circle.", "There is a blue square."]),
        ("The cat is black and sits on a mat.", ["The cat is black.", "The cat sits on a mat."]),
        ("There are two dogs and a cat.", ["There are two dogs.", "There is a cat."]),
        ("There is a cat and two dogs.", ["There is a cat.", "There are two dogs."]),
        ("There was a cat and two dogs.", ["There was a cat.", "There were two dogs."]),
        (
            "The table has a cup, a plate, and a fork.",
            ["The table has a cup.", "The table has a plate.", "The table has a fork."],
        ),
        ("The man is holding a cup and a plate.", ["The man is holding a cup.", "The man is holding a plate."]),
        (
            "A man and a woman are sitting on a bench.",
            ["A man is sitting on a bench.", "A woman is sitting on a bench."],
        ),
        ("Two men and a dog walk along the beach.", ["Two men walk along the beach.", "A dog walks along the beach."]),
        ("The cat is black and fluffy.", ["The cat is black.", "The cat is fluffy."]),
        ("The cat has a long tail and sharp claws.", ["The cat has a long tail.", "The cat has sharp claws."]),
        (
            "The man is sitting on a bench and holding a cup.",
            ["The man is sitting on a bench.", "The man is holding a cup."],
        ),
        (
            "The cat is sitting on the mat and the dog is lying on the rug.",
            ["The cat is sitting on the mat.", "The dog is lying on the rug."],
        ),
        ("The dog sat on the mat and the rug.", ["The dog sat on the mat.", "The dog sat on the rug."]),
        ("The cat sleeps while the dog plays.", ["The cat sleeps.", "The dog plays."]),
        ("The cat is black, but the dog is white.", ["The cat is black.", "The dog is white."]),
        ("The cat is black; the dog is white.", ["The cat is black.", "The dog is white."]),
        ("The cat isn't black, but the dog is.", ["The cat is not black.", "The dog is black."]),
        ("The cat is black but not fluffy.", ["The cat is black.", "The cat is not fluffy."]),
        ("The man doesn't wear a hat and a scarf.", ["The man does not wear a hat.", "The man does not wear a scarf."]),
        ("There is no dog and no cat.", ["There is no dog.", "There is no cat."]),
        ("In the image, there is a cat and a dog.", ["In the image, there is a cat.", "In the image, there is a dog."]),
        (
            "The image shows a kitchen, with a stove and a sink.",
            ["The image shows a kitchen.", "The image shows a stove.", "The image shows a sink."],
        ),
        ("The cat, which is black, sits on the mat.", ["The cat sits on the mat.", "The cat is black."]),
        ("A red circle, a blue square.", ["There is a red circle.", "There is a blue square."]),
        ("Yes, there is a cat.", ["There is a cat."]),
        ("The sky is blue and there are 3 birds.", ["The sky is blue.", "There are 3 birds."]),
    ],
)
def test_split_claims_rule(answer, claims):
    assert split_claims_rule(answer) == claims


@pytest.mark.parametrize(
    "answer",
    [
        "The cat is black and white.",  # a fixed pair
        "There is a red and blue ball.",  # adjectives of one object
        "There is a big, red ball on the table.",
        "The ball is between the cat and the dog.",
        "A man is standing, with his arms crossed.",  # ", with" after no object: not a separate claim
    ],
)
def test_split_claims_rule_keeps_units_whole(answer):
    assert split_claims_rule(answer) == [answer]


def test_split_claims_rule_drops_opinions_and_hedges_keeps_facts():
    answer = (
        "I think there is a dog. It is beautiful. The man might be a teacher. In my opinion, the room is nice. "
        "The sky is blue. The garden creates a cozy atmosphere. There is not a single cloud."
    )
    assert split_claims_rule(answer) == ["The sky is blue.", "There is not a single cloud."]


def test_split_claims_rule_strips_attributive_judgements_and_fixes_articles():
    assert split_claims_rule("The image depicts an amazing apple and a very beautiful sunset.") == [
        "The image depicts an apple.",
        "The image depicts a sunset.",
    ]
    assert split_claims_rule("There is a lovely owl.") == ["There is an owl."]


def test_split_claims_rule_robust_to_case_whitespace_punctuation():
    assert split_claims_rule("   the   cat is   black   ") == ["The cat is black."]
    assert split_claims_rule("THERE IS A RED CIRCLE AND A BLUE SQUARE!!") == [
        "THERE IS A RED CIRCLE.",
        "THERE IS A BLUE SQUARE.",
    ]
    assert split_claims_rule('"There is a cat."') == ["There is a cat."]
    assert split_claims_rule("there's a cat;") == ["There is a cat."]


def test_split_claims_rule_sentences_lists_abbreviations_numbers():
    assert split_claims_rule("1. There is a cat.\n2. There is a dog.\n- The sky is blue.") == [
        "There is a cat.",
        "There is a dog.",
        "The sky is blue.",
    ]
    assert split_claims_rule("Mr. Smith is tall. He wears a hat.") == ["Mr. Smith is tall.", "He wears a hat."]
    assert split_claims_rule("The sign reads 3.5 km. There are 1,000 birds.") == [
        "The sign reads 3.5 km.",
        "There are 1,000 birds.",
    ]


def test_split_claims_rule_empty_and_contentless():
    for answer in ["", "   ", "Yes.", "No", "...", "\n\n"]:
        assert split_claims_rule(answer) == []


def test_split_claims_rule_dedupes_and_is_deterministic():
    answer = "There is a cat. there is a cat. There is a cat and a dog."
    assert split_claims_rule(answer) == ["There is a cat.", "There is a dog."]
    assert split_claims_rule(answer) == split_claims_rule(answer)


# ------------------------------------------------------------------------------------------------ rule-based questions


@pytest.mark.parametrize(
    "claim, question",
    [
        ("There is a red circle.", "Is there a red circle?"),
        ("The cat is black.", "Is the cat black?"),
        ("There are two dogs.", "Are there two dogs?"),
        ("The man does not wear a hat.", "Does the man not wear a hat?"),
        ("The dog sat on the mat.", "Did the dog sit on the mat?"),
        ("The cats were sleeping.", "Were the cats sleeping?"),
        ("The man has eaten the cake.", "Has the man eaten the cake?"),
        ("There has been an accident.", "Has there been an accident?"),
        ("The man has a hat.", "Does the man have a hat?"),
        ("The children have balloons.", "Do the children have balloons?"),
        ("The woman had a red umbrella.", "Did the woman have a red umbrella?"),
        ("The boy can swim.", "Can the boy swim?"),
        ("The man who is wearing a hat is tall.", "Is the man who is wearing a hat tall?"),
        ("The dogs run.", "Do the dogs run?"),
        ("The man cut the cake.", "Did the man cut the cake?"),
        ("The boys cut the cake.", "Do the boys cut the cake?"),
        ("The dog barked.", "Did the dog bark?"),  # unknown regular verb
        ("The dog chased the ball.", "Did the dog chase the ball?"),
        ("The cat lay on the bed.", "Did the cat lie on the bed?"),
        ("The sun shone brightly.", "Did the sun shine brightly?"),
        ("The plane flies over the city.", "Does the plane fly over the city?"),
        ("The man never smiles.", "Does the man never smile?"),
        ("There isn't a dog.", "Is there not a dog?"),
        ("There won't be rain.", "Will there not be rain?"),
        ("The girl cannot swim.", "Can the girl not swim?"),
        ("It's raining.", "Is it raining?"),
        ("John is holding an apple.", "Is John holding an apple?"),
        ("A dog with a red collar sits on the grass.", "Does a dog with a red collar sit on the grass?"),
        ("In the image, there is a cat.", "In the image, is there a cat?"),
        ("A cat.", "Is there a cat?"),
        ("Two cats.", "Are there two cats?"),
    ],
)
def test_claim_to_question_rule(claim, question):
    assert claim_to_question_rule(claim) == question


@pytest.mark.parametrize(
    "claim, question",
    [
        ("the cat is black", "Is the cat black?"),
        ("  The dog  sat on the mat .", "Did the dog sit on the mat?"),
        ("The cat is black!!", "Is the cat black?"),
        ('"There is a cat."', "Is there a cat?"),
        ("THERE IS A RED CIRCLE.", "Is there A RED CIRCLE?"),
        ("Is there a cat?", "Is there a cat?"),  # already a question
        ("is there a cat", "Is there a cat?"),
    ],
)
def test_claim_to_question_rule_robustness(claim, question):
    assert claim_to_question_rule(claim) == question


def test_claim_to_question_rule_fallback():
    assert claim_to_question_rule("The cat purrs.") == "Is it true that the cat purrs?"
    assert claim_to_question_rule("Sunny weather.") == "Is it true that Sunny weather?"


def test_claim_to_question_rule_rejects_empty():
    with pytest.raises(ValueError):
        claim_to_question_rule("  .  ")


# --------------------------------------------------------------------------------------------------- sentences, chunks


def test_split_sentences():
    text = "There is a cat. Is it black? Yes!  It is.\n\n- A dog.\n- A bird\n1. One\n2) Two"
    assert split_sentences(text) == [
        "There is a cat.", "Is it black?", "Yes!", "It is.", "- A dog.", "- A bird", "1. One", "2) Two"
    ]
    assert split_sentences("The cat\nis black.") == ["The cat is black."]  # a wrapped line is not a boundary
    assert split_sentences("") == []


def long_answer(n):
    return " ".join(f"There is a object{i} near the tree." for i in range(n))  # 7 words a sentence


def test_chunk_answer_never_loses_words():
    answer = long_answer(100)
    chunks = chunk_answer(answer, 30)
    assert " ".join(chunks).split() == answer.split()
    assert all(len(c.split()) <= 30 for c in chunks)
    assert len(chunks) == math.ceil(100 / 4)  # 4 sentences of 7 words fit in 30
    assert chunks[-1].endswith("object99 near the tree.")


def test_chunk_answer_keeps_a_long_sentence_whole():
    sentence = " ".join(["word"] * 400) + "."
    answer = "Short one. " + sentence + " Tail here."
    chunks = chunk_answer(answer, 50)
    assert chunks == ["Short one.", sentence, "Tail here."]
    with pytest.raises(ValueError):
        chunk_answer(answer, 0)


# ------------------------------------------------------------------------------------------------------ Division, Rule


def test_division_needs_one_question_per_claim():
    with pytest.raises(ValueError, match="one question per claim"):
        Division(("a.", "b."), ("A?",), "rule")
    with pytest.raises(ValueError, match="fallbacks"):
        Division(("a.",), ("A?",), "m", fallbacks=(1,))


def test_rule_divider():
    divider = RuleDivider()
    assert isinstance(divider, Divider)
    out = divider.divide(["There is a red circle and a blue square.", "", "The cat purrs."])
    assert [d.method for d in out] == ["rule"] * 3
    assert out[0].claims == ("There is a red circle.", "There is a blue square.")
    assert out[0].questions == ("Is there a red circle?", "Is there a blue square?")
    assert out[0].notes == () and out[0].mismatch is None
    assert out[1].claims == () and out[1].questions == ()
    assert out[2].questions == ("Is it true that the cat purrs?",) and "no question rule" in out[2].notes[0]
    with pytest.raises(ValueError, match="instructions"):
        divider.divide(["a"], instructions=["x", "y"])


# ------------------------------------------------------------------------------------------------------------- parsing


MESSY_CLAIMS = [
    ("Here are the facts:\n1. There is a cat.\n2. The cat is black.", ["There is a cat.", "The cat is black."]),
    ("1) There is a cat\n2) The cat is black", ["There is a cat.", "The cat is black."]),
    (
        "- There is a cat.\n* The cat is black.\n• The mat is red.",
        ["There is a cat.", "The cat is black.", "The mat is red."],
    ),
    ("\n\n  - There is a cat.  \n\n\n  - The cat is black.\n", ["There is a cat.", "The cat is black."]),
    ('"There is a cat."\n“The cat is black.”', ["There is a cat.", "The cat is black."]),
    ("### Facts:\n- **There is a cat.**\n- There is a cat.\n- there is a cat", ["There is a cat."]),
    ("Sure! Here is the list of claims.\n1. There is a cat.", ["There is a cat."]),
    ("Claims:\nClaim 1: There is a cat.\nFact 2: The cat is black.", ["There is a cat.", "The cat is black."]),
    ("There is a cat. The cat is black.", ["There is a cat.", "The cat is black."]),
    ("None", []),
    ("None.", []),
    ("There are no factual claims in this answer.", []),
    ("", []),
    ("1.\n2. There is no dog.", ["There is no dog."]),
    ("(1) There is a cat.\na) The cat is black.", ["There is a cat.", "The cat is black."]),
    ("Here is a dog.\nHere are two cats.\nI hope this helps!", ["Here is a dog.", "Here are two cats."]),
    ("The following are the claims\n- There is a dog.", ["There is a dog."]),
]


@pytest.mark.parametrize("output, claims", MESSY_CLAIMS)
def test_parse_claims(output, claims):
    assert parse_claims(output) == claims


@pytest.mark.parametrize(
    "output, questions",
    [
        ("Is the cat black?", ["Is the cat black?"]),
        ("Question: Is the cat black?", ["Is the cat black?"]),
        ('"Is the cat black?"', ["Is the cat black?"]),
        ("Sure! Here is the question:\n\nIs the cat black?", ["Is the cat black?"]),
        ("Sure. Is the cat black?", ["Is the cat black?"]),
        ("The question is: Does the dog not bark?", ["Does the dog not bark?"]),
        ("- is the cat black?", ["Is the cat black?"]),
        ("Is the cat black? Yes, it is.", ["Is the cat black?"]),
        ("Is the cat black", ["Is the cat black?"]),  # no mark, but an auxiliary first
        ("1. Is the cat black?\n2. Is the cat small?", ["Is the cat black?", "Is the cat small?"]),
        ("I cannot do that.", []),
        ("", []),
        ("?", []),
    ],
)
def test_parse_question(output, questions):
    assert parse_question(output) == questions


# -------------------------------------------------------------------------------------------------------- LLM divider


class ScriptedEngine:
    """Test double for the Engine protocol's `generate`: claims prompts echo the chunk's sentences as a messy
    numbered list; question prompts get a scripted reply (a function of the claim) or the rule-based question."""

    model_name = "scripted-llm"

    def __init__(self, question_reply=None, claims_reply=None, drop_outputs=0):
        self.calls = []
        self.question_reply = question_reply
        self.claims_reply = claims_reply
        self.drop_outputs = drop_outputs

    def generate(self, prompts, *, max_new_tokens):
        self.calls.append((list(prompts), max_new_tokens))
        out = []
        for p in prompts:
            if p.startswith(CLAIMS_PROMPT.split("{")[0][:40]):
                chunk = p.split("\nAnswer:\n", 1)[1].rsplit("\n\nClaims:", 1)[0]
                if self.claims_reply is not None:
                    out.append(self.claims_reply(chunk))
                else:
                    items = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(split_sentences(chunk)))
                    out.append("Here are the facts:\n\n" + items + "\n")
            else:
                claim = p.split("Statement: ", 1)[1].rsplit("\nQuestion:", 1)[0]
                reply = self.question_reply(claim) if self.question_reply else None
                out.append(reply if reply is not None else "Question: " + claim_to_question_rule(claim))
        return out[: len(out) - self.drop_outputs]


def test_llm_divider_basic():
    engine = ScriptedEngine()
    divider = LLMDivider(engine)
    assert isinstance(divider, Divider)
    [d] = divider.divide(["There is a cat. The cat is black."])
    assert d.claims == ("There is a cat.", "The cat is black.")
    assert d.questions == ("Is there a cat?", "Is the cat black?")
    assert d.method == "scripted-llm" and d.mismatch is None and d.fallbacks == () and d.notes == ()
    assert [len(prompts) for prompts, _ in engine.calls] == [1, 2]  # one claims call, one batched question call
    assert [n for _, n in engine.calls] == [512, 64]


def test_llm_divider_prompts():
    engine = ScriptedEngine()
    LLMDivider(engine).divide(["There is a cat."], instructions=["Describe the image."])
    claims_prompt, question_prompt = engine.calls[0][0][0], engine.calls[1][0][0]
    assert "Question the answer replies to: Describe the image." in claims_prompt
    assert "one claim per line" in claims_prompt and "opinions" in claims_prompt and "negations" in claims_prompt
    assert claims_prompt.rstrip().endswith("Answer:\nThere is a cat.\n\nClaims:")
    assert question_prompt == QUESTION_PROMPT.format(claim="There is a cat.")
    assert "tense" in question_prompt and "negation" in question_prompt


def test_llm_divider_long_answer_in_chunks_keeps_the_tail():
    answer = long_answer(120)  # 840 words: the reference would check only the first 300
    engine = ScriptedEngine()
    [d] = LLMDivider(engine, LLMDividerConfig(max_chunk_words=50)).divide([answer])
    claims_prompts = engine.calls[0][0]
    assert len(claims_prompts) == math.ceil(120 / 7)  # 7 sentences of 7 words a chunk
    assert len(d.claims) == 120 and d.claims[-1] == "There is a object119 near the tree."
    assert len(d.questions) == 120 and d.questions[-1] == "Is there a object119 near the tree?"
    assert any("chunks" in n for n in d.notes)
    # later chunks carry the previous sentence as context, not as material
    context = "Earlier part of the answer (context only; do not list its claims): There is a object6 near the tree."
    assert context in claims_prompts[1]


def test_llm_divider_long_sentence_sent_whole():
    sentence = "There is a cat " + " ".join(["and a dog"] * 100) + " and a bird."
    [d] = LLMDivider(ScriptedEngine(), LLMDividerConfig(max_chunk_words=20)).divide([sentence])
    assert d.claims == (sentence,)
    assert any("exceeds max_chunk_words" in n for n in d.notes)


def test_llm_divider_dedupes_across_chunks():
    answer = "There is a cat. " * 10
    [d] = LLMDivider(ScriptedEngine(), LLMDividerConfig(max_chunk_words=8)).divide([answer])
    assert d.claims == ("There is a cat.",)


def test_llm_divider_reports_extra_questions():
    def reply(claim):
        return "Is the cat black?\nIs the cat white?" if "black and white" in claim else None

    engine = ScriptedEngine(question_reply=reply)
    [d] = LLMDivider(engine).divide(["There is a cat. The cat is black and white."])
    assert d.questions == ("Is there a cat?", "Is the cat black?")  # first kept, one per claim
    assert d.mismatch == (2, 3)
    assert any("claim 1: the model gave 2 questions" in n for n in d.notes)
    assert any("count mismatch: 2 claims, 3 questions" in n for n in d.notes)


def test_llm_divider_unparseable_question_falls_back_and_is_marked():
    engine = ScriptedEngine(question_reply=lambda c: "I am sorry, I can not help with that." if "dog" in c else None)
    [d] = LLMDivider(engine).divide(["There is a cat. The dog sat on the mat. There is a bird."])
    assert d.questions == ("Is there a cat?", "Did the dog sit on the mat?", "Is there a bird?")
    assert d.fallbacks == (1,) and d.mismatch == (3, 2)
    assert any("claim 1: no question in the model output" in n for n in d.notes)


def test_llm_divider_messy_claim_outputs():
    for output, expected in MESSY_CLAIMS:
        [d] = LLMDivider(ScriptedEngine(claims_reply=lambda chunk: output)).divide(["Some answer."])
        assert d.claims == tuple(expected)
        assert len(d.questions) == len(d.claims)
        if not expected:
            assert "the model listed no claims" in d.notes


def test_llm_divider_batches_and_keeps_answers_apart():
    answers = [f"There is a cat{i}. The cat{i} is black." for i in range(5)] + ["", "   "]
    engine = ScriptedEngine()
    out = LLMDivider(engine, LLMDividerConfig(batch_size=3)).divide(answers)
    assert [len(p) for p, _ in engine.calls] == [3, 2, 3, 3, 3, 1]  # 5 claims prompts, then 10 question prompts
    for i in range(5):
        assert out[i].claims == (f"There is a cat{i}.", f"The cat{i} is black.")
        assert out[i].questions == (f"Is there a cat{i}?", f"Is the cat{i} black?")
    assert out[5].claims == () and out[6].claims == () and out[5].notes == ()


def test_llm_divider_wrong_output_count_raises():
    with pytest.raises(EngineOutputError, match="1 completions for 2 prompts"):
        LLMDivider(ScriptedEngine(drop_outputs=1)).divide(["There is a cat.", "There is a dog."])


def test_llm_divider_config_validation_and_instructions():
    with pytest.raises(ValueError):
        LLMDividerConfig(max_chunk_words=0)
    with pytest.raises(TypeError):
        LLMDividerConfig(10)  # type: ignore[misc]
    with pytest.raises(ValueError, match="instructions"):
        LLMDivider(ScriptedEngine()).divide(["a", "b"], instructions=["only one"])


def test_llm_divider_empty_input():
    engine = ScriptedEngine()
    assert LLMDivider(engine).divide([]) == []


# ------------------------------------------------------------------------------------------------------- properties

WORDS = (
    "there is are was a an the cat dogs and , ; but while with not no has have does did sat sits I think beautiful . ? "
    "! 1. - * which who that between black white in on it they can't isn't 3 two very , and"
).split(" ") + ["\n", "'", '"', "There", "THE", "Mr."]

if given is not None:

    @given(st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join))
    def test_rule_divider_total_on_word_salad(text):
        [d] = RuleDivider().divide([text])
        assert len(d.claims) == len(d.questions)
        assert all(c.endswith(".") and len(c.split()) >= 2 for c in d.claims)
        assert all(q.endswith("?") for q in d.questions)
        assert len(set(c.lower() for c in d.claims)) == len(d.claims)

    @given(st.text(max_size=200))
    def test_parsers_total_on_any_text(text):
        for claim in parse_claims(text):
            assert claim.strip() == claim and claim[-1] in ".!?"
        for q in parse_question(text):
            assert q.endswith("?")
        chunks = chunk_answer(text, 5)
        assert " ".join(chunks).split() == text.split()
