"""The paper's text manipulations: NV (Table 2), clause swap (PTe, Fig. 2), before<->after
(BAT, Fig. 3) and as<->then (Table 3), and the PTe preposition test.

The training input uses NV (`data.text_transform="nv"`); the language probes use all of
them. Both import this module, which imports neither.

The swaps return None for a sentence they cannot manipulate: none of the words, more than
one (which clause would move?), or the word at a place where no clause stands on one side.
Words are matched whole and case-insensitively ("afterwards" holds no "after"; the
substring test of the authors' ACBA script, `data_pipeline.acba.eligible`, would count
it). The output keeps natural capitalisation and punctuation: the new first word is
capitalised, the old first word is lower-cased unless it is a proper noun ("I", acronyms,
or what spaCy tags PROPN; where no spaCy pipeline is installed, a warning says that proper
nouns will be lower-cased), and the final punctuation stays final.

NV and the proper-noun check use a spaCy English pipeline. Its name is a setting: the
argument `model`, else the environment variable ATJAX_SPACY_MODEL, else the official
"en_core_web_sm" (the variable redirects the default name, e.g. to a copy of the model
installed under another package name).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Sequence

__all__ = [
    "DEFAULT_SPACY_MODEL", "SPACY_MODEL_ENV", "NV_POS", "PTE_PREPOSITIONS", "SpacyModelError",
    "spacy_model_name", "nouns_and_verbs_many", "nouns_and_verbs", "prepositions_in",
    "has_word", "swap_clauses", "swap_before_after", "swap_as_then",
]

DEFAULT_SPACY_MODEL = "en_core_web_sm"
SPACY_MODEL_ENV = "ATJAX_SPACY_MODEL"

log = logging.getLogger(__name__)

# What the paper keeps of a caption for NV: nouns (proper nouns are nouns) and verbs.
# Auxiliaries ("is", "has") are AUX in spaCy's universal tags, so "is" drops as in the
# paper's example while "passing" stays.
NV_POS = frozenset({"NOUN", "PROPN", "VERB"})

PTE_PREPOSITIONS = ("before", "after", "then", "followed by")

_PTE = re.compile(r"\b(before|after|then|followed\s+by)\b", re.IGNORECASE)
_BEFORE_AFTER = re.compile(r"\b(before|after)\b", re.IGNORECASE)
_AS_THEN = re.compile(r"\b(as|then)\b", re.IGNORECASE)
# "as" in these phrases is a comparison or an example, not simultaneity.
_AS_NOT_TEMPORAL = re.compile(
    r"\b(such\s+as|as\s+well|as\s+if|as\s+though|the\s+same\s+as|as\s+to)\b", re.IGNORECASE)

# Words that travel with the preposition when the clauses around it are exchanged:
# "A, and shortly after B" -> "B, and shortly after A"; "A and is followed by B" -> "B and
# is followed by A" (a conjunction, then a copula, then an adverb of the preposition).
# Before "then", "quickly", "long" and "right" usually end the first clause ("cars
# approach quickly then pass"), so they stay there.
_GLUE_ADVERBS = {
    "then": r"shortly|soon|just|immediately",
}
_GLUE_ADVERBS_DEFAULT = r"shortly|soon|just|right|immediately|quickly|long|not\s+long"


def _glue_before(prep: str) -> str:
    adverbs = _GLUE_ADVERBS.get(prep, _GLUE_ADVERBS_DEFAULT)
    return (r"(?:,\s*|;\s*|\b)(?:(?:and|but)\s+)?(?:(?:which\s+)?(?:is|are)\s+)?"
            rf"(?:(?:{adverbs})\s+)?")


_GLUE_AFTER = {
    "before": r"(?:\s+(?:that|this|long))?(?:\s*,)?",
    "after": r"(?:\s+(?:that|this|which|a\s+while|a\s+moment|some\s+time|a\s+few\s+seconds))?"
             r"(?:\s*,)?",
    "then": r"(?:\s*,)?",
    "followed by": r"",
}
_FINAL_PUNCT = ".!?"

# Closed-class words that are never proper nouns: decided without running the tagger.
_COMMON_FIRST_WORDS = frozenset("""
a an the this that these those there it its he she they we you his her their our my your
one two three four five six seven eight nine ten several many multiple some someone somebody
something people each every another both all no few lots lot loud soft small large
""".split())


class SpacyModelError(RuntimeError):
    """The configured spaCy pipeline is not installed."""


def spacy_model_name(model: str = DEFAULT_SPACY_MODEL) -> str:
    """The pipeline to load: `model`, or ATJAX_SPACY_MODEL when `model` is the default."""
    if model == DEFAULT_SPACY_MODEL:
        return os.environ.get(SPACY_MODEL_ENV) or model
    return model


@functools.lru_cache(maxsize=4)
def _pipeline(name: str):
    try:
        import spacy
    except ImportError as e:
        raise SpacyModelError("spaCy is not installed: pip install spacy "
                              f"&& python -m spacy download {name}") from e
    try:
        # Only the tagger is needed (POS comes from tagger + attribute ruler).
        return spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter"])
    except OSError as e:
        raise SpacyModelError(
            f"spaCy model {name!r} is not installed. Install it with "
            f"`python -m spacy download {name}` (or pip install the model package), or "
            f"name another installed English pipeline with {SPACY_MODEL_ENV}=<name>.") from e


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _nv_of(doc) -> str:
    return _capitalise(" ".join(t.text for t in doc if t.pos_ in NV_POS))


def nouns_and_verbs_many(sentences: Sequence[str], *, model: str = DEFAULT_SPACY_MODEL,
                         batch_size: int = 256) -> list[str]:
    """NV for many sentences at once (spaCy's nlp.pipe; each distinct sentence tagged once).

    A sentence with no noun or verb becomes "" (the training pipeline skips and counts
    empty captions).
    """
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is {type(s).__name__}, not str")
    nlp = _pipeline(spacy_model_name(model))
    distinct = list(dict.fromkeys(s.strip() for s in sentences))
    texts = [s for s in distinct if s]
    done = {"": ""}
    if texts:
        from tqdm import tqdm
        docs = nlp.pipe(texts, batch_size=batch_size)
        for text, doc in zip(texts, tqdm(docs, total=len(texts), desc="nouns+verbs",
                                         unit="sent", disable=len(texts) < 5000)):
            done[text] = _nv_of(doc)
    return [done[s.strip()] for s in sentences]


def nouns_and_verbs(s: str, *, model: str = DEFAULT_SPACY_MODEL) -> str:
    """Keeps only the nouns and verbs of a sentence, the first word capitalised:
    "A vehicle is passing through a forest road as birds chirp in the background" ->
    "Vehicle passing forest road birds chirp background"."""
    return nouns_and_verbs_many([s], model=model)[0]


def prepositions_in(s: str) -> list[str]:
    """The distinct PTe prepositions a sentence holds, in PTE_PREPOSITIONS order."""
    found = {re.sub(r"\s+", " ", m.group(1).lower()) for m in _PTE.finditer(s)}
    return [p for p in PTE_PREPOSITIONS if p in found]


def has_word(s: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", s, re.IGNORECASE) is not None


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return _capitalise(word) if template[:1].isupper() else word


def _is_proper_first_word(sentence: str) -> bool:
    """Whether the sentence-initial word keeps its capital in the middle of a sentence."""
    m = re.match(r"\s*([A-Za-z][\w'-]*)", sentence)
    if not m:
        return False
    word = m.group(1)
    if word == "I" or word.startswith("I'"):
        return True
    if not word[0].isupper():
        return False
    if len(word) > 1 and (word.isupper() or any(c.isupper() for c in word[1:])):
        return True  # an acronym ("TV") or a mixed-case name ("McDonald")
    if word.lower() in _COMMON_FIRST_WORDS:
        return False
    try:
        nlp = _pipeline(spacy_model_name())
    except SpacyModelError as e:
        # The swaps must run where only numpy is installed (the GPU image): without a
        # tagger a capitalised first word is taken for a common noun, and we say so once.
        _warn_no_tagger(str(e))
        return False
    doc = nlp(sentence.strip())
    return len(doc) > 0 and doc[0].pos_ == "PROPN"


@functools.lru_cache(maxsize=1)
def _warn_no_tagger(why: str) -> None:
    log.warning("%s Without it, the clause swaps lower-case every capitalised "
                "sentence-initial word, proper nouns included.", why)


def _strip_final(s: str) -> tuple[str, str]:
    body = s.rstrip()
    end = len(body)
    while end > 0 and body[end - 1] in _FINAL_PUNCT:
        end -= 1
    return body[:end].rstrip(), body[end:]


def _clause(s: str) -> str:
    return s.strip().strip(",;").strip()


def _join(first: str, connector: str, second: str, final: str, capital: bool) -> str:
    connector = re.sub(r"\s+", " ", connector.strip())
    if connector.startswith((",", ";")):
        glue = connector[0] + " " + connector[1:].strip()
    else:
        glue = " " + connector
    first = _capitalise(first) if capital else first
    return f"{first}{glue} {second}{final}"


def _demote(clause: str, was_first: bool, sentence: str, proper_nouns: bool = True) -> str:
    """Lower-cases the old sentence-initial word unless it is a proper noun."""
    if was_first and not (proper_nouns and _is_proper_first_word(sentence)):
        return clause[:1].lower() + clause[1:]
    return clause


def swap_clauses(s: str, *, proper_nouns: bool = True) -> str | None:
    """Exchanges the clauses around the one PTe preposition (before/after/then/followed by):
    "Two cars drive past before a distant semi truck honks." ->
    "A distant semi truck honks before two cars drive past."; "A after B" -> "B after A";
    "After A, B" -> "After B, A". None if the sentence has no such word or several.

    `proper_nouns=False` says that the text holds none (a generated corpus's captions): a
    capitalised first word is then lower-cased without asking the spaCy tagger."""
    matches = list(_PTE.finditer(s))
    if len(matches) != 1:
        return None
    m = matches[0]
    prep = re.sub(r"\s+", " ", m.group(1).lower())
    body, final = _strip_final(s)
    lead = len(body) - len(body.lstrip())
    if m.start() == lead:
        # "Before A, B" / "After A, B": the clauses are separated by the one comma.
        if prep not in ("before", "after"):
            return None
        rest = body[m.end():]
        if rest.count(",") != 1:
            return None
        a, b = (_clause(x) for x in rest.split(","))
        if not a or not b:
            return None
        return f"{m.group(1)} {b}, {a}{final}"
    connector = re.compile(_glue_before(prep) + re.escape(m.group(1)) + _GLUE_AFTER[prep],
                           re.IGNORECASE).search(body)
    left, right = _clause(body[:connector.start()]), _clause(body[connector.end():])
    if not re.search(r"\w", left) or not re.search(r"\w", right):
        return None
    # The new first word is capitalised when the original's was (lower-case captions stay
    # lower-case, so a cased text encoder sees no spurious difference).
    capital = body.lstrip()[:1].isupper()
    return _join(right, connector.group(0), _demote(left, True, s, proper_nouns), final,
                 capital)


def swap_before_after(s: str) -> str | None:
    """Replaces "before" with "after" or vice versa (BAT): "Two cars drive past before a
    distant semi truck honks" -> "Two cars drive past after a distant semi truck honks".
    None unless the sentence holds exactly one PTe preposition and it is before/after."""
    if len(_PTE.findall(s)) != 1:
        return None
    m = _BEFORE_AFTER.search(s)
    if m is None:
        return None
    other = "after" if m.group(1).lower() == "before" else "before"
    return s[:m.start()] + _match_case(m.group(1), other) + s[m.end():]


def swap_as_then(s: str) -> str | None:
    """"as" -> "then" and "then" -> "as" (Table 3). "A, and then B" becomes "A as B" (the
    "and" and comma that go with "then" do not go with "as"). None unless exactly one of
    the two words occurs, or when "as" is part of "such as", "as well", "as if", ..."""
    matches = list(_AS_THEN.finditer(s))
    if len(matches) != 1 or _AS_NOT_TEMPORAL.search(s):
        return None
    m = matches[0]
    if m.group(1).lower() == "as":
        return s[:m.start()] + _match_case(m.group(1), "then") + s[m.end():]
    g = re.search(r"(?:,\s*|\s+)(?:and\s+)?" + re.escape(m.group(1)) + r"(?:\s*,)?",
                  s[:m.end() + 2])
    if g is not None and g.end() >= m.end() and g.start() > 0:
        return s[:g.start()] + " " + _match_case(m.group(1), "as") + " " + \
            s[g.end():].lstrip()
    return s[:m.start()] + _match_case(m.group(1), "as") + s[m.end():]
