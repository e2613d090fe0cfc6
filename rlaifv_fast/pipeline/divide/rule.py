"""The rule-based divider: deterministic and offline (tests, the shapes-world demo).

`split_claims_rule` splits sentences, then coordinated clauses, predicates and objects ("and", ",", ";", "but",
"while", ", with"), repeating the subject so each claim stands alone; it drops opinions and hedges (the marker lists
below) and keeps negations. `claim_to_question_rule` inverts the auxiliary ("The cat is black." -> "Is the cat
black?") or adds do-support ("The dog sat on the mat." -> "Did the dog sit on the mat?"), keeping negation, tense and
content; when no rule applies it answers "Is it true that <claim>?".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from .base import Division, check_instructions


# --------------------------------------------------------------------------------------------------------------------
# Word lists. Small on purpose: the rule-based path serves tests and synthetic data; real answers go to LLMDivider.
# --------------------------------------------------------------------------------------------------------------------

# A sentence or claim that starts with one of these is an opinion or a hedge and is dropped (matched lowercase,
# after contractions are expanded).
OPINION_PREFIXES = (
    "i think", "i believe", "i feel", "i guess", "i suppose", "i would say", "i am not sure", "in my opinion",
    "personally", "it seems", "it appears that", "it looks like", "it is likely", "it is possible", "it is unclear",
    "i can not", "as an ai",
)
# Speculation anywhere in a claim makes it unverifiable against the image: the claim is dropped.
HEDGE_WORDS = frozenset(
    "perhaps maybe probably possibly presumably likely might may could would seemingly apparently".split()
)
# Judgements of taste or mood: "It is beautiful." The claim is dropped.
SUBJECTIVE_WORDS = frozenset(
    """beautiful lovely nice pleasant amazing wonderful stunning gorgeous charming cute adorable peaceful serene
    tranquil interesting delightful picturesque breathtaking impressive magnificent awesome fantastic ugly boring
    cozy inviting elegant idyllic whimsical captivating atmosphere ambiance ambience""".split()
)

_BE = frozenset("am is are was were".split())
_DO = frozenset("do does did".split())
_HAVE = frozenset("has have had".split())
_MODALS = frozenset("can could will would may might shall should must".split())
_AUX = _BE | _DO | _MODALS  # "has/have/had" is an auxiliary only before a participle (see _find_verb)

_SINGULAR_DETS = frozenset("a an one this that each every another".split())
_NUMBERS = frozenset(
    "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
    "nineteen twenty thirty forty fifty hundred dozens".split()
)
_PLURAL_DETS = _NUMBERS | frozenset("these those several many multiple few both various numerous".split())
_DETERMINERS = (
    _SINGULAR_DETS | _PLURAL_DETS
    | frozenset("the some any no its his her their my our your all most much little other".split())
)
_PRONOUNS = frozenset("it he she they we i you".split())
_PREPOSITIONS = frozenset(
    """in on at under above below behind beside besides next near by between inside outside over across along around
    against into onto from of to for with through atop beneath underneath within without among toward towards upon
    beyond throughout""".split()
)
_IRREGULAR_PLURALS = frozenset("people men women children mice geese teeth feet police cattle".split())
_ADVERBS = frozenset("also then still just often always usually never already too".split())
# Words ending in "-ing" that are nouns, so a fragment starting with one is not a verb phrase.
_ING_NOUNS = frozenset(
    """thing something nothing anything everything building ceiling painting clothing morning evening wing string
    spring king ring sibling awning earring railing icing bedding pudding wedding stuffing frosting lighting topping
    parking dumpling crossing sing bring swing sling""".split()
)
_YES_NO = frozenset("yes no sure okay ok correct incorrect true false".split())
_DISCOURSE = frozenset(
    "additionally also however overall moreover furthermore finally besides firstly secondly lastly well so then "
    "meanwhile instead otherwise similarly likewise".split()
)

# Pairs that "and" joins into one thing; never split.
_FIXED_AND = (
    "black and white", "salt and pepper", "bread and butter", "knife and fork", "fish and chips",
    "macaroni and cheese", "rock and roll", "arts and crafts", "cup and saucer", "bed and breakfast", "up and down",
    "back and forth", "in and out", "here and there", "pros and cons", "odds and ends", "nuts and bolts",
    "pen and paper", "ham and cheese", "peanut butter and jelly", "red and white", "blue and white",
)
_JOIN = "\x00"  # stands for a protected " and " while splitting

# base -> (past, past participle)
_IRREGULAR = {
    "sit": ("sat", "sat"), "stand": ("stood", "stood"), "lie": ("lay", "lain"), "hold": ("held", "held"),
    "wear": ("wore", "worn"), "run": ("ran", "run"), "eat": ("ate", "eaten"), "drink": ("drank", "drunk"),
    "ride": ("rode", "ridden"), "fly": ("flew", "flown"), "swim": ("swam", "swum"), "grow": ("grew", "grown"),
    "read": ("read", "read"), "write": ("wrote", "written"), "sleep": ("slept", "slept"),
    "throw": ("threw", "thrown"), "catch": ("caught", "caught"), "hit": ("hit", "hit"), "cut": ("cut", "cut"),
    "put": ("put", "put"), "sell": ("sold", "sold"), "drive": ("drove", "driven"), "go": ("went", "gone"),
    "come": ("came", "come"), "see": ("saw", "seen"), "make": ("made", "made"), "take": ("took", "taken"),
    "give": ("gave", "given"), "get": ("got", "gotten"), "keep": ("kept", "kept"), "hang": ("hung", "hung"),
    "lead": ("led", "led"), "leave": ("left", "left"), "bring": ("brought", "brought"), "buy": ("bought", "bought"),
    "find": ("found", "found"), "fall": ("fell", "fallen"), "feed": ("fed", "fed"), "draw": ("drew", "drawn"),
    "blow": ("blew", "blown"), "break": ("broke", "broken"), "build": ("built", "built"),
    "shine": ("shone", "shone"), "sing": ("sang", "sung"), "speak": ("spoke", "spoken"), "spin": ("spun", "spun"),
    "stick": ("stuck", "stuck"), "swing": ("swung", "swung"), "teach": ("taught", "taught"), "tell": ("told", "told"),
    "wake": ("woke", "woken"), "win": ("won", "won"), "lay": ("laid", "laid"), "set": ("set", "set"),
    "shut": ("shut", "shut"), "let": ("let", "let"), "beat": ("beat", "beaten"), "bite": ("bit", "bitten"),
    "hide": ("hid", "hidden"), "shake": ("shook", "shaken"), "sweep": ("swept", "swept"), "meet": ("met", "met"),
    "send": ("sent", "sent"), "bend": ("bent", "bent"), "rise": ("rose", "risen"), "begin": ("began", "begun"),
    "show": ("showed", "shown"), "sink": ("sank", "sunk"), "dig": ("dug", "dug"), "light": ("lit", "lit"),
    "lose": ("lost", "lost"), "pay": ("paid", "paid"), "say": ("said", "said"), "shoot": ("shot", "shot"),
    "slide": ("slid", "slid"), "strike": ("struck", "struck"), "tear": ("tore", "torn"), "freeze": ("froze", "frozen"),
    "fight": ("fought", "fought"), "hear": ("heard", "heard"), "know": ("knew", "known"), "kneel": ("knelt", "knelt"),
    "spread": ("spread", "spread"), "wind": ("wound", "wound"), "lean": ("leaned", "leaned"),
}
_REGULAR = frozenset(
    """walk play look contain appear face feature cover rest talk smile laugh watch wait cross park float surround
    depict display include climb jump kick cook use fill point reach place carry pull push open close touch wash
    paint fix dance move turn stop shop plan hug chase follow graze perch pose serve sail land roll stare gaze line
    decorate occupy border overlook stretch dress study try cry dry fry enjoy stay hop drop drag grab nap wag rub
    skip tap pat chat jog dip trim clap grin nod slip step wrap beg plug prepare practice balance race arrange share
    type hike skate ski stack pile lift load bark splash paddle relax tie visit water pack plant flow glow crouch
    squat mount attach connect belong hover seem wave hop fish mow surf kiss yell shout bark pet brush comb sniff
    lick chew feed rain snow decorate hang reflect block fence fill frame support carry appear remain sit""".split()
)
_DOUBLING = frozenset(
    "stop shop plan hug hop drop drag grab nap wag rub skip tap pat chat jog dip trim clap grin nod slip step wrap "
    "beg plug pet".split()
)


def _third_person(base: str) -> str:
    if base == "have":
        return "has"
    if re.search(r"(s|sh|ch|x|z|o)$", base):
        return base + "es"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ies"
    return base + "s"


def _regular_past(base: str) -> str:
    if base.endswith("e"):
        return base + "d"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ied"
    if base in _DOUBLING:
        return base + base[-1] + "ed"
    return base + "ed"


_BASES = frozenset(_IRREGULAR) | _REGULAR
_THIRD = {_third_person(b): b for b in _BASES}
_PAST: dict[str, str] = {}
for _b in sorted(_BASES):
    _PAST.setdefault(_IRREGULAR[_b][0] if _b in _IRREGULAR else _regular_past(_b), _b)
_PARTICIPLES = frozenset({pp for _, pp in _IRREGULAR.values()} | set(_PAST) | {"been", "got"})
# A finite main verb never follows these words (a word after "the" or "on" is a noun: "a watch", "the left").
_NOT_BEFORE_VERB = _DETERMINERS | _PREPOSITIONS | frozenset({"to", "very", "and", "or"})


def _unpast(word: str) -> str:
    """The base form of an unknown regular past form (best effort; known verbs use the tables)."""
    stem = word[:-2]
    if stem.endswith("i"):
        return stem[:-1] + "y"
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        return stem[:-1]
    if stem[-1:] in ("v", "c", "z", "u") or stem.endswith(("at", "ag", "ng", "rg", "dg", "ur", "as", "os")):
        return stem + "e"
    return stem


# --------------------------------------------------------------------------------------------------------------------
# Text normalisation
# --------------------------------------------------------------------------------------------------------------------

_CONTRACTIONS = (
    (re.compile(r"\bcan['’]t\b", re.I), "can not"),
    (re.compile(r"\bcannot\b", re.I), "can not"),
    (re.compile(r"\bwon['’]t\b", re.I), "will not"),
    (re.compile(r"\bshan['’]t\b", re.I), "shall not"),
    (re.compile(r"\b(\w+)n['’]t\b", re.I), r"\1 not"),
    (re.compile(r"\b(there|it|that|here|he|she|what|where|who)['’]s\b", re.I), r"\1 is"),
    (re.compile(r"\b(\w+)['’]re\b", re.I), r"\1 are"),
    (re.compile(r"\b(I)['’]m\b", re.I), r"\1 am"),
    (re.compile(r"\b(I|you|we|they)['’]ve\b", re.I), r"\1 have"),
    (re.compile(r"\b(I|you|we|they|he|she|it)['’]ll\b", re.I), r"\1 will"),
)
_QUOTES = "\"'“”‘’`«»"
_TRAILING = re.compile(r"[\s.!?;:,]+$")


def _normalize(text: str) -> str:
    """Collapse whitespace, strip wrapping quotes and trailing punctuation, expand contractions."""
    text = " ".join(text.split())
    text = text.strip(_QUOTES + " ")
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return _TRAILING.sub("", text).strip(_QUOTES + " ")


def _key(word: str) -> str:
    """A word lowercased without surrounding punctuation, for matching."""
    return word.strip(_QUOTES + ".,;:!?()[]").lower()


def _finish(words: Sequence[str]) -> str:
    """Words -> a claim sentence: capitalised, one final period."""
    text = _TRAILING.sub("", " ".join(words).replace(_JOIN, " and "))
    return text[:1].upper() + text[1:] + "." if text else ""


# --------------------------------------------------------------------------------------------------------------------
# Sentences and chunks
# --------------------------------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset("mr mrs ms dr st vs etc e.g i.e no jr sr approx fig prof mt ft".split())
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]”’]*(?=\s)")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•·–—+]|\d+[.)]|\(\d+\)|[a-z]\))\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, whitespace collapsed, content unchanged. Boundaries: . ! ? followed by whitespace (not
    after a known abbreviation or a single capital initial), blank lines, and line breaks before a list item."""
    paragraphs = re.split(r"\n\s*\n|\n(?=\s*(?:[-*•·–—+]|\d+[.)]|\(\d+\))\s)", text)
    sentences: list[str] = []
    for paragraph in paragraphs:
        paragraph = " ".join(paragraph.split())
        start = 0
        for m in _SENTENCE_END.finditer(paragraph):
            before = paragraph[start : m.start()].split()
            last = before[-1].lower() if before else ""
            if m.group().startswith(".") and (
                last in _ABBREVIATIONS
                or re.fullmatch(r"[A-Z]", before[-1] if before else "")
                or re.fullmatch(r"\d+", paragraph[start : m.start()].strip())  # a list marker "1. "
            ):
                continue
            sentences.append(paragraph[start : m.end()].strip())
            start = m.end()
        tail = paragraph[start:].strip()
        if tail:
            sentences.append(tail)
    return [s for s in sentences if s]


def chunk_answer(answer: str, max_words: int) -> list[str]:
    """Consecutive sentences grouped into chunks of at most `max_words` words. Nothing is cut: a single sentence
    longer than `max_words` becomes a chunk of its own. The chunks' words, concatenated, are the answer's words."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in split_sentences(answer):
        n = len(sentence.split())
        if current and count + n > max_words:
            chunks.append(" ".join(current))
            current, count = [], 0
        current.append(sentence)
        count += n
    if current:
        chunks.append(" ".join(current))
    return chunks


# --------------------------------------------------------------------------------------------------------------------
# Verbs, subjects and questions
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Verb:
    index: int
    word: str  # lowercase, as written
    aux: bool  # inverts in a question ("is", "can", "does", "has" before a participle); else do-support
    base: str  # base form for do-support ("sat" -> "sit"); the word itself for auxiliaries
    tense: str  # "3sg", "past" or "base"


def _is_plural(words: Sequence[str]) -> bool:
    """Number of a noun phrase or subject (best effort): its determiner, else its head noun's ending."""
    lw = [_key(w) for w in words if _key(w)]
    if not lw:
        return False
    if lw[0] in _SINGULAR_DETS or lw[0] in ("he", "she", "it", "there"):
        return False
    if lw[0] in _PLURAL_DETS or lw[0] in ("they", "we", "you") or (lw[0].isdigit() and lw[0] != "1"):
        return True
    head = lw
    for i, w in enumerate(lw[1:], 1):  # the head noun is the last word before a preposition or relative pronoun
        if w in _PREPOSITIONS or w in ("who", "which", "that", "with"):
            head = lw[:i]
            break
    noun = head[-1].replace(_JOIN, " ").split()[-1]
    if noun in _IRREGULAR_PLURALS:
        return True
    return noun.endswith("s") and not noun.endswith(("ss", "us", "is", "'s"))


def _plain_verb(word: str, prev: str, i: int, coordinated: bool = False) -> tuple[str, str] | None:
    """(base, tense) when `word` at position i (after `prev`) can be a finite main verb of the lexicon. A base form
    needs a plural-looking subject (or `coordinated`: the subject is "X and Y")."""
    if i == 0 or prev in _NOT_BEFORE_VERB:
        return None
    if word in _THIRD:
        return _THIRD[word], "3sg"
    if word in _PAST:
        return _PAST[word], "past"
    if word in _BASES and (coordinated or prev in ("they", "we", "you", "i") or prev in _ADVERBS or _is_plural([prev])):
        return word, "base"
    return None


def _find_verb(lw: Sequence[str], coordinated: bool = False) -> _Verb | None:
    """The main clause's finite verb in lowercase words (skipping one verb after a relative pronoun)."""
    in_relative = False
    for i, w in enumerate(lw):
        prev = lw[i - 1] if i else ""
        if i > 0 and w in ("who", "which", "that") and prev not in _PREPOSITIONS and prev not in _DETERMINERS:
            in_relative = True
            continue
        verb = None
        if w in _AUX:
            verb = _Verb(i, w, True, w, "past" if w in ("was", "were", "did") else "3sg")
        elif w in _HAVE:
            nxt = next((x for x in lw[i + 1 :] if x not in ("not", "never") and x not in _ADVERBS), "")
            tense = {"has": "3sg", "had": "past", "have": "base"}[w]
            verb = _Verb(i, w, nxt in _PARTICIPLES, "have", tense)
        else:
            found = _plain_verb(w, prev, i, coordinated or "and" in lw[:i])
            if found is not None:
                base, tense = found
                if tense == "past" and w == base and (coordinated or _is_plural(lw[:i])):
                    tense = "base"  # "cut", "put", "read": past for a singular subject, present for a plural one
                verb = _Verb(i, w, False, base, tense)
        if verb is None:
            continue
        if in_relative:
            in_relative = False
            continue
        return verb
    # No known verb: an unknown regular past form after a noun ("The dog barked").
    for i, w in enumerate(lw):
        if i > 0 and len(w) > 4 and w.endswith("ed") and lw[i - 1] not in _NOT_BEFORE_VERB:
            return _Verb(i, w, False, _unpast(w), "past")
    return None


_LOWERABLE = _DETERMINERS | _PRONOUNS - {"i"} | frozenset({"there", "here"})


def _is_noun_phrase(lw: Sequence[str]) -> bool:
    """A verbless claim like "A cat on a mat." or "Two cats." (not "The cat purrs.", whose verb is unknown)."""
    if lw[0] in _SINGULAR_DETS:
        return not any(w.endswith("s") and not w.endswith(("ss", "us", "is")) for w in lw[1:])
    if lw[0] in _PLURAL_DETS or (lw[0].isdigit() and lw[0] != "1"):
        return len(lw) > 1 and lw[-1].endswith("s")
    return False


def _lower_first(words: list[str]) -> list[str]:
    if words and _key(words[0]) in _LOWERABLE:
        return [words[0].lower()] + words[1:]
    return words


def _question(claim: str) -> tuple[str, bool]:
    """(question, matched): matched is False when no rule applied and "Is it true that ...?" was used."""
    asked = claim.strip().rstrip(_QUOTES + " ").endswith("?")
    text = _normalize(claim)
    if not text:
        raise ValueError("claim_to_question_rule needs a non-empty claim")
    words = text.split()
    lw = [_key(w) for w in words]
    if lw[0] in _AUX or lw[0] in _HAVE:  # already a question ("Is there a cat?"), with or without its mark
        if asked or len(words) > 1:
            return _finish(words)[:-1] + "?", True
    verb = _find_verb(lw)
    if verb is None and _is_noun_phrase(lw):
        return ("Are there " if _is_plural(words) else "Is there ") + " ".join(_lower_first(words)) + "?", True
    if verb is None or verb.index == 0:
        return "Is it true that " + " ".join(_lower_first(words)) + "?", False
    subject = words[: verb.index]
    # An introductory phrase stays in front: "In the image, there is a cat." -> "In the image, is there a cat?"
    cut = max((k + 1 for k, w in enumerate(subject) if w.endswith(",")), default=0)
    intro, subject = subject[:cut], _lower_first(subject[cut:])
    if not subject:
        return "Is it true that " + " ".join(_lower_first(words)) + "?", False
    rest = words[verb.index + 1 :]
    if verb.aux:
        aux = [verb.word]
    else:
        tail = words[verb.index][len(verb.word) :]  # punctuation glued to the verb ("sat," -> "sit,")
        aux, rest = [{"3sg": "does", "past": "did", "base": "do"}[verb.tense]], [verb.base + tail] + rest
    if not intro:
        aux = [aux[0].capitalize()]
    return " ".join(intro + aux + subject + rest) + "?", True


def claim_to_question_rule(claim: str) -> str:
    """A declarative claim as a polar question, negation, tense and content unchanged.

    "There is a red circle." -> "Is there a red circle?"; "The man does not wear a hat." -> "Does the man not wear a
    hat?"; "The dog sat on the mat." -> "Did the dog sit on the mat?"; no rule -> "Is it true that <claim>?".
    """
    return _question(claim)[0]


# --------------------------------------------------------------------------------------------------------------------
# Rule-based claim splitting
# --------------------------------------------------------------------------------------------------------------------


def _is_opinion(text: str) -> bool:
    """An opinion-led sentence (OPINION_PREFIXES) or a hedged claim (HEDGE_WORDS)."""
    low = _normalize(text).lower()
    if any(low == p or low.startswith((p + " ", p + ",")) for p in OPINION_PREFIXES):
        return True
    return any(_key(w) in HEDGE_WORDS for w in low.split())


_INTENSIFIERS = frozenset("very really quite so truly rather particularly especially most more".split())
_LINKING = _BE | frozenset("look looks looked seem seems seemed feel feels felt appear appears appeared".split())


def _an(word: str) -> bool:
    """Whether a word takes "an" (by its spelling; the usual exceptions)."""
    w = word.lower()
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return True
    exceptions = ("uni", "use", "usu", "ute", "one", "once", "eu", "ewe")
    return w[:1] in ("a", "e", "i", "o", "u") and not w.startswith(exceptions)


def _drop_subjective(words: list[str]) -> list[str] | None:
    """Judgements of taste go: attributive ones leave the claim ("an amazing view" -> "a view"), a claim that is a
    judgement ("It is beautiful.", "a cozy atmosphere") is dropped (None). Fixes "a"/"an" after a removal."""
    out: list[str] = []
    removed = False
    for i, w in enumerate(words):
        k = _key(w)
        if k not in SUBJECTIVE_WORDS:
            out.append(w)
            continue
        nxt = _key(words[i + 1]) if i + 1 < len(words) else ""
        prev = _key(out[-1]) if out else ""
        predicative = not nxt or nxt in ("and", "or") or prev in _LINKING or w[-1] in ",;"
        if predicative or k.startswith("ambi") or k == "atmosphere":
            return None
        while out and _key(out[-1]) in _INTENSIFIERS:
            out.pop()
        removed = True
    if removed:
        for i in range(len(out) - 1):
            k = _key(out[i])
            if k in ("a", "an") and out[i] == out[i].strip(_QUOTES + ".,;:!?()[]"):
                new = "an" if _an(_key(out[i + 1])) else "a"
                out[i] = new.capitalize() if out[i][0].isupper() else new
    return out


_RELATIVE = re.compile(r"^(?P<ante>[^,]+?),\s*(?P<pron>which|who)\s+(?P<rel>[^,]+?)(?:,\s*(?P<rest>.*))?$", re.I)


def _lift_relative(group: str) -> list[str]:
    """"The cat, which is black, sits on the mat." -> ["The cat sits on the mat", "The cat is black"]. When the
    antecedent is not a plain noun phrase before the main verb, the clause stays inline, commas dropped."""
    m = _RELATIVE.match(group)
    if not m:
        return [group]
    ante, pron, rel, rest = m.group("ante"), m.group("pron"), m.group("rel"), m.group("rest")
    lw = [_key(w) for w in ante.split()]
    if rest and lw and (lw[0] in _DETERMINERS or ante[:1].isupper()) and _find_verb(lw) is None:
        return [f"{ante} {rest}", f"{ante} {rel}"]
    return [f"{ante} {pron} {rel}" + (f", {rest}" if rest else "")]


def _protect(text: str) -> str:
    """Hide the "and" of fixed pairs ("black and white") and of "between X and Y" from the splitter."""
    for phrase in _FIXED_AND:
        text = re.sub(r"\b" + re.escape(phrase) + r"\b", lambda m: m.group().replace(" and ", _JOIN), text, flags=re.I)
    return re.sub(r"\b(between\s+[^,;]+?)\s+and\s+", lambda m: m.group(1) + _JOIN, text, flags=re.I)


@dataclasses.dataclass(frozen=True)
class _Head:
    """What a following fragment borrows from the clause before it."""

    subject: list[str]
    verb: _Verb
    words: list[str]  # the whole clause
    object_at: int | None  # index of a determiner-led object ("a cup"), the slot an NP fragment fills
    complement_at: int | None  # index after a copula ("is black"), the slot an adjective fragment fills
    existential: bool
    direct: bool  # the object follows the verb without a preposition (", with X" can fill it)

    @property
    def past(self) -> bool:
        return self.verb.tense == "past" or self.verb.word in ("was", "were")


def _head(words: list[str]) -> _Head | None:
    lw = [_key(w) for w in words]
    verb = _find_verb(lw)
    if verb is None or verb.index == 0:
        return None
    # The slot a following noun phrase fills: the first object after the verb ("has a cup, a plate"; "holds an
    # umbrella in her hand and a bag"), or the one after a last "with" ("sits at a table with a laptop and a cup" ->
    # "... with a cup"); "there is" always takes the first.
    start = verb.index + 1
    last_with = max((j for j in range(start, len(lw)) if lw[j] == "with"), default=None)
    if last_with is not None and not (lw[verb.index - 1] == "there" and verb.word in _BE):
        start = last_with + 1
    object_at = next((j for j in range(start, len(lw)) if lw[j] in _DETERMINERS or lw[j].isdigit()), None)
    direct = object_at is not None and not any(w in _PREPOSITIONS for w in lw[verb.index + 1 : object_at])
    complement_at = None
    if verb.word in _BE and verb.index + 1 < len(lw):
        j = verb.index + 1
        while j < len(lw) and lw[j] in ("not", "also", "very", "still"):
            j += 1
        if j < len(lw) and not (lw[j].endswith("ing") or lw[j] in _PARTICIPLES):
            complement_at = j
    existential = lw[verb.index - 1] == "there" and verb.word in _BE
    return _Head(words[: verb.index], verb, words, object_at, complement_at, existential, direct)


def _fill_ellipsis(words: list[str], prev: _Head | None) -> list[str]:
    """"The cat is not black, but the dog is." -> "the dog is black": a clause ending in its auxiliary borrows the
    previous clause's predicate (its own negation, if any, kept)."""
    lw = [_key(w) for w in words]
    verb = _find_verb(lw)
    if prev is None or verb is None or not verb.aux:
        return words
    after = lw[verb.index + 1 :]
    if not all(w in ("not", "too", "also", "either", "as", "well") for w in after):
        return words
    borrowed = prev.words[prev.verb.index + 1 :]
    while borrowed and _key(borrowed[0]) in ("not", "never"):
        borrowed = borrowed[1:]
    if not borrowed:
        return words
    return words[: verb.index + 1] + (["not"] if "not" in after else []) + borrowed


def _be(plural: bool, past: bool) -> str:
    return ("were" if past else "are") if plural else ("was" if past else "is")


def _singular_verb(words: list[str]) -> list[str]:
    """Agree a predicate with a singular subject split off a coordinated one ("A man and a woman are ...")."""
    if not words:
        return words
    w = _key(words[0])
    swap = {"are": "is", "were": "was", "have": "has", "do": "does"}.get(w)
    if swap is None and w in _BASES and w not in _PAST:
        swap = _third_person(w)
    return [swap] + words[1:] if swap else words


def _classify(words: list[str], coordinated: bool = False) -> str:
    lw = [_key(w) for w in words]
    first = lw[0]
    if first == "with":
        return "with"
    if first == "not":
        return "not"
    if first in _AUX or first in _HAVE or first in _THIRD or first in _PAST or first in _BASES:
        if not (first in _BASES and first not in _THIRD and len(lw) > 1 and lw[1] in _BE):  # "play area is ..."
            return "predicate"
    if first.endswith("ing") and len(first) > 4 and first not in _ING_NOUNS:
        return "ing"
    verb = _find_verb(lw, coordinated)
    if verb is not None and verb.index > 0:
        return "clause"
    if first in _DETERMINERS or first.isdigit():
        return "np"
    return "bare"


_SEPARATOR = re.compile(r"(\s*,(?!\d)\s*(?:and|but|while|whereas)?\s+|\s+(?:and|but|while|whereas)\s+)", re.I)


def _split_clause_group(text: str) -> list[list[str]]:
    """One ';'-free piece of a sentence -> claims as word lists."""
    parts = _SEPARATOR.split(_protect(text))
    frags = [parts[0]] + parts[2::2]
    seps = [""] + [s.strip() for s in parts[1::2]]
    pieces: list[tuple[str, list[str]]] = []
    for sep, frag in zip(seps, frags):
        words = frag.split()
        while words and _key(words[0]) in _ADVERBS - {"never"} and len(words) > 1:
            words = words[1:]  # "... and also has a tail" -> "has a tail"
        if len(words) == 1 and (_key(words[0]) in _YES_NO or _key(words[0]) in _DISCOURSE):
            continue  # "Yes, there is a cat." / "Additionally, ..."
        if words:
            pieces.append((sep if pieces else "", words))
    if not pieces:
        return []

    # A leading prepositional phrase ("In the image, there is ...") belongs to the clause after it.
    def is_phrase(words: list[str]) -> bool:
        return _key(words[0]) in _PREPOSITIONS and _find_verb([_key(w) for w in words]) is None

    while len(pieces) > 1 and is_phrase(pieces[0][1]):
        merged = [*pieces[0][1][:-1], pieces[0][1][-1] + ","] + pieces[1][1]
        pieces = [("", merged)] + pieces[2:]

    kinds = [_classify(w) for _, w in pieces]
    if kinds[0] in ("np", "bare") and "clause" not in kinds:  # "Two men and a dog walk ...": base verb after "a dog"
        kinds = [_classify(w, coordinated=True) for _, w in pieces]
    claims: list[list[str]] = []
    subjects: list[list[str]]

    first_clause = next((i for i, k in enumerate(kinds) if k == "clause"), None)
    if kinds[0] == "clause":
        subjects = []
        start = 0
    elif first_clause is not None and all(k in ("np", "bare") for k in kinds[:first_clause]):
        # Subject coordination: "A man and a woman are sitting." -> one claim per subject, verb agreed.
        words = pieces[first_clause][1]
        verb = _find_verb([_key(w) for w in words], coordinated=True)
        assert verb is not None
        predicate = words[verb.index :]
        subjects = [w for _, w in pieces[:first_clause]] + [words[: verb.index]]
        subjects = [s[1:] if _key(s[0]) == "both" and len(s) > 1 else s for s in subjects]
        for s in subjects:
            claims.append(s + (_singular_verb(predicate) if not _is_plural(s) else predicate))
        start = first_clause + 1
    elif all(k in ("np", "bare") for k in kinds) and _is_noun_phrase([_key(w) for w in pieces[0][1]]):
        # No clause, a list of noun phrases ("A red circle, a blue square.") -> existential claims.
        out: list[list[str]] = []
        for sep, words in pieces:
            if _is_noun_phrase([_key(w) for w in words]):
                out.append(["There", _be(_is_plural(words), False)] + _lower_first(words))
            else:
                out[-1] = _glue(out[-1], sep, words)  # "A big, red ball."
        return out
    else:
        return [_glue_all(pieces)]  # no clause to borrow from: one claim, as written

    heads: list[_Head | None]
    if not subjects:
        claims.append(pieces[0][1])
        heads = [_head(pieces[0][1])]
        start = 1
    else:
        heads = [_head(c) for c in claims]

    for (sep, words), kind in zip(pieces[start:], kinds[start:]):
        if kind == "clause":
            claims.append(_fill_ellipsis(words, heads[-1] if heads else None))
            heads = [_head(claims[-1])]
            continue
        live = [h for h in heads if h is not None]
        new_claims: list[list[str]] = []
        for head in live:
            plural = _is_plural(head.subject)
            if kind == "predicate" and head.existential and _key(words[0]) not in _AUX | _HAVE:
                kind = "np" if _key(words[0]) in _DETERMINERS else "bare"  # "There is a tree and plants."
            if kind == "predicate":
                new_claims.append(head.subject + (words if plural else _singular_verb(words)))
            elif kind == "ing":
                new_claims.append(head.subject + [_be(plural, head.past)] + words)
            elif kind == "not":
                if head.verb.aux:
                    new_claims.append(head.subject + [head.words[head.verb.index]] + words)
                else:
                    do = {"3sg": "does", "past": "did", "base": "do"}[head.verb.tense]
                    rest = words[1:]
                    if rest:
                        w = _key(rest[0])
                        rest = [_THIRD.get(w) or _PAST.get(w) or rest[0]] + rest[1:]
                    new_claims.append(head.subject + [do, "not"] + rest)
            elif kind in ("np", "with", "bare"):
                np_words = words[1:] if kind == "with" else words
                if not np_words:
                    continue
                if kind == "with" and not head.direct:
                    prefix = None  # "sits on the grass, with a ball next to it" stays one claim
                elif kind in ("np", "with") and head.object_at is not None:
                    prefix = head.words[: head.object_at]
                elif kind == "np" and head.complement_at is not None:
                    prefix = head.words[: head.complement_at]
                elif kind == "bare" and head.complement_at is not None and head.object_at is None:
                    prefix = head.words[: head.complement_at]  # "is black and fluffy"
                elif kind == "bare" and head.object_at is not None and _is_plural(np_words):
                    prefix = head.words[: head.object_at]  # "has a long tail and sharp claws"
                else:
                    prefix = None
                if prefix is None:  # not a separate claim: glue it back ("a cup and saucer", "a big, red ball")
                    new_claims = []
                    break
                if head.existential:
                    prefix = prefix[:]
                    be = _be(_is_plural(np_words), head.past)
                    prefix[head.verb.index] = be.upper() if prefix[head.verb.index].isupper() else be
                new_claims.append(prefix + np_words)
        if new_claims:
            claims.extend(new_claims)
            heads = [_head(c) for c in new_claims]
        else:
            claims[-1] = _glue(claims[-1], sep, words)
            heads = [_head(claims[-1])]
    return claims


def _glue(claim: list[str], sep: str, words: list[str]) -> list[str]:
    """Put a fragment back where the splitter cut it: "a cup" + "and" + "saucer" -> "a cup and saucer"."""
    if sep.startswith(","):
        claim = claim[:-1] + [claim[-1] + ","]
        sep = sep[1:].strip()
    return claim + ([sep] if sep else []) + words


def _glue_all(pieces: list[tuple[str, list[str]]]) -> list[str]:
    claim = pieces[0][1]
    for sep, words in pieces[1:]:
        claim = _glue(claim, sep, words)
    return claim


def split_claims_rule(answer: str) -> list[str]:
    """An answer -> atomic declarative claims (deterministic, offline).

    Sentences are split, then coordinated clauses, predicates, adjectives and objects ("and", ",", ";", "but",
    "while", ", with"), each claim repeating its subject and verb: "There is a red circle and a blue square." ->
    ["There is a red circle.", "There is a blue square."]; "The cat is black and sits on a mat." -> ["The cat is
    black.", "The cat sits on a mat."]. Coordinated subjects are distributed with the verb agreed ("A man and a woman
    are sitting." -> "A man is sitting.", ...), a verbless list of noun phrases becomes "There is ..." claims, an
    elliptical clause borrows its predicate ("..., but the dog is." -> "The dog is black."), and a non-restrictive
    relative clause becomes its own claim. Fixed pairs ("black and white") and "between X and Y" stay whole; a
    fragment that cannot stand alone is glued back ("a cup and saucer", "a big, red ball").

    Dropped: sentences led by an opinion marker (OPINION_PREFIXES) and claims with a hedge (HEDGE_WORDS); a judgement
    (SUBJECTIVE_WORDS) drops its claim when it is the claim's point ("It is beautiful.") and is removed when it only
    qualifies a noun ("an amazing view" -> "a view"); bare yes/no and one-word fragments go too. Negations are kept,
    contractions expanded ("isn't" -> "is not"), duplicates (case-insensitive) dropped. Pronouns are not resolved.
    """
    claims: list[str] = []
    seen: set[str] = set()
    for sentence in split_sentences(answer):
        sentence = _LIST_MARKER.sub("", sentence)
        low = _normalize(sentence).lower()
        if any(low == p or low.startswith((p + " ", p + ",")) for p in OPINION_PREFIXES):
            continue  # an opinion-led sentence goes whole: "I think there is a cat and a dog."
        groups = [_TRAILING.sub("", g.strip()) for g in _normalize(sentence).split(";")]
        for group in [piece for g in groups if g for piece in _lift_relative(g)]:
            for words in _split_clause_group(group):
                kept = _drop_subjective(words)
                if kept is None:
                    continue
                claim = _finish(kept)
                core = [k for k in map(_key, claim.split()) if any(ch.isalnum() for ch in k)]
                if len(core) < 2 or all(w in _YES_NO for w in core) or _is_opinion(claim):
                    continue
                key = " ".join(claim.lower().split()).rstrip(".")
                if key not in seen:
                    seen.add(key)
                    claims.append(claim)
    return claims


# --------------------------------------------------------------------------------------------------------------------
# Dividers
# --------------------------------------------------------------------------------------------------------------------


class RuleDivider:
    """Deterministic, offline divider: split_claims_rule then claim_to_question_rule."""

    method = "rule"

    def divide(self, answers: Sequence[str], *, instructions: Sequence[str] | None = None) -> list[Division]:
        check_instructions(answers, instructions)
        out = []
        for answer in answers:
            claims = split_claims_rule(answer)
            questions, notes = [], []
            for i, claim in enumerate(claims):
                q, matched = _question(claim)
                questions.append(q)
                if not matched:
                    notes.append(f"claim {i}: no question rule applied; asked 'Is it true that ...?'")
            out.append(Division(tuple(claims), tuple(questions), self.method, tuple(notes)))
        return out

