"""Each release builder on a tiny generated copy of its release layout.

Every layout holds clips of analytic test tones at the release's rate and format, plus
missing and corrupt audio. A preparation must hold exactly the good clips, with their
metadata and their audio resampled to the model's rate as int16 mono, and must list the
bad ones in skipped.json. Each layout is prepared once per module (TFDS writing costs a
second or two per dataset).
"""

import json
import logging
import shutil

import numpy as np
import pytest

import layouts
from data_pipeline import builder_base, datasets, prepare

SR = 16000
INTERIOR = slice(160, -160)  # resampler edge transients (10 ms) are not compared
BUILT = tuple(layouts.MAKERS)


@pytest.fixture(scope="module", params=BUILT)
def prepared(request, tmp_path_factory):
    name = request.param
    base = tmp_path_factory.mktemp(name)
    layout = layouts.MAKERS[name](base / "release")
    data_dir = str(base / "data")
    builder = prepare.prepare(name, data_dir=data_dir, manual_dir=str(layout.root), sample_rate=SR)
    return name, layout, builder, data_dir


def _elements(name, split, data_dir, sample_rate=SR):
    ds = datasets.load_split(name, split, data_dir, sample_rate)
    return {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}


def _decoded_features(builder, ex):
    """An element's features in the layout's terms (strings, label names, plain lists)."""
    out = {}
    for key, value in ex.items():
        if key in ("id", "audio"):
            continue
        if key == "label":
            out[key] = builder.info.features["label"].int2str(int(value))
        elif key == "fold":
            out[key] = int(value)
        elif key in ("captions", "labels"):
            out[key] = [v.decode() for v in value]
        elif key == "events":
            out[key] = [
                (round(float(on), 3), round(float(off), 3), lab.decode())
                for on, off, lab in zip(value["onset"], value["offset"], value["label"])
            ]
        else:
            raise AssertionError(f"unexpected feature {key}")
    return out


def _expected_features(expected):
    features = dict(expected.features)
    if "events" in features:
        features["events"] = [(round(on, 3), round(off, 3), lab) for on, off, lab in features["events"]]
    return features


def _check_audio(clip_id, pcm, expected):
    assert pcm.dtype == np.int16 and pcm.ndim == 1, clip_id
    got = pcm.astype(np.float64) / 32768.0
    want = expected.tone.mono(SR)
    if expected.lossy:
        # Codec delay and noise: align by cross-correlation, then require a near-perfect match.
        assert abs(len(got) - len(want)) < 0.1 * SR, clip_id
        n = min(len(got), len(want)) - 800
        lag = max(range(800), key=lambda k: float(np.dot(got[k : k + n], want[:n])))
        assert np.corrcoef(got[lag : lag + n][400:-400], want[:n][400:-400])[0, 1] > 0.99, clip_id
        return
    if expected.subtype == "IMA_ADPCM":  # block-padded at the end, 4-bit steps
        assert len(got) >= len(want), clip_id
        got, tol = got[: len(want)], 2e-2
    else:
        assert len(got) == len(want), clip_id
        tol = {"PCM_U8": 1.5e-2}.get(expected.subtype, 3e-4)
    np.testing.assert_allclose(got[INTERIOR], want[INTERIOR], atol=tol, err_msg=clip_id)


def test_round_trip(prepared):
    name, layout, builder, data_dir = prepared
    assert builder.info.features["audio"].sample_rate == SR
    prepared_splits = set(builder.info.splits.keys())
    assert prepared_splits == set(layout.clips), name
    assert prepared_splits <= set(datasets.SPLITS[name])
    for split, expected_clips in layout.clips.items():
        elements = _elements(name, split, data_dir)
        assert set(elements) == set(expected_clips), (name, split)
        for clip_id, expected in expected_clips.items():
            ex = elements[clip_id]
            assert _decoded_features(builder, ex) == _expected_features(expected), (name, clip_id)
            _check_audio(clip_id, ex["audio"], expected)
    # The prepared folder is self-describing (readable without this package's registry).
    import tensorflow_datasets as tfds

    restored = tfds.builder_from_directory(str(builder.data_path))
    assert restored.info.features["audio"].sample_rate == SR
    assert set(restored.info.features.keys()) == set(builder.info.features.keys())


def test_skip_report_lists_missing_and_corrupt_clips(prepared):
    name, layout, builder, _ = prepared
    report = json.loads((builder.data_path / builder_base.REPORT_FILENAME).read_text())
    assert report["dataset"] == name and report["sample_rate"] == SR
    total = 0
    for split in set(layout.clips) | set(layout.skipped):
        entry = report["splits"][split]
        listed = {s["id"]: s["reason"] for s in entry["skipped"] if s["reason"] != "no captions"}
        assert listed == layout.skipped.get(split, {}), (name, split)
        assert entry["prepared"] == len(layout.clips.get(split, {}))
        assert entry["skipped_by_reason"] == {
            r: sum(1 for v in listed.values() if v == r) for r in set(listed.values())
        }
        for s in entry["skipped"]:
            if s["reason"] == "undecodable":
                assert s["id"] in s["detail"] or s["path"] in s["detail"]
        total += entry["skipped_total"]
    assert report["skipped_total"] == total > 0


@pytest.mark.parametrize("name", BUILT)
def test_missing_metadata_file_is_named(name, tmp_path):
    layout = layouts.MAKERS[name](tmp_path / "release")
    for relpath in layout.metadata_files:
        shutil.move(layout.root / relpath, tmp_path / "aside")
        with pytest.raises(builder_base.LayoutError, match=relpath.split("/")[-1]):
            prepare.prepare(name, data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)
        shutil.move(tmp_path / "aside", layout.root / relpath)
        assert not datasets.builder(name, str(tmp_path / "data"), SR).is_prepared()


def test_metadata_is_found_below_the_manual_dir(tmp_path):
    # Users often point at the folder that contains the release folder.
    layout = layouts.make_urbansound8k(tmp_path / "downloads" / "UrbanSound8K")
    b = datasets.builder("urbansound8k", str(tmp_path / "data"), SR)
    clips = b._read_release(tmp_path / "downloads", builder_base.Report())["train"]
    found = {c.id for c in clips if c.path is not None}
    assert found == set(layout.clips["train"])


def test_same_rate_keeps_int16_samples_exactly(tmp_path):
    layout = layouts.make_esc50(tmp_path / "release")
    b = prepare.prepare("esc50", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=44100)
    assert b.builder_config.name == "44100hz"
    elements = _elements("esc50", "train", str(tmp_path / "data"), 44100)
    for clip_id in layout.clips["train"]:
        source, rate = layouts.sf.read(layout.root / "audio" / clip_id, dtype="int16")
        assert rate == 44100
        np.testing.assert_array_equal(elements[clip_id]["audio"], source)


def test_split_registry_matches_the_builders(tmp_path):
    # datasets.SPLITS is the TensorFlow-free copy that evaluators and configs read.
    for name in BUILT:
        b = datasets.builder(name, str(tmp_path), SR)
        assert b.name == name and tuple(b.SPLITS) == datasets.SPLITS[name]


def test_any_sample_rate_gets_its_own_config(tmp_path):
    b = datasets.builder("clotho", str(tmp_path), 12345)
    assert b.builder_config.name == "12345hz" and b.sample_rate == 12345
    assert b.info.features["audio"].sample_rate == 12345
    assert str(b.data_path).endswith("clotho/12345hz/1.0.0")
    with pytest.raises(ValueError, match="positive"):
        datasets.builder("clotho", str(tmp_path), -1)


def test_load_split_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_pipeline.prepare esc50 --manual_dir"):
        datasets.load_split("esc50", "train", str(tmp_path), SR)
    with pytest.raises(ValueError, match="unknown dataset 'esc5'"):
        datasets.builder("esc5", str(tmp_path), SR)


def test_split_without_any_audio_is_reported_not_generated(tmp_path, caplog):
    layout = layouts.make_audiocaps(tmp_path / "release")
    shutil.rmtree(layout.root / "audio" / "val")
    with caplog.at_level(logging.INFO):
        prepare.prepare("audiocaps", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)
    assert "audiocaps val: 0 clips prepared, skipped 2 missing NOT GENERATED" in caplog.text
    with pytest.raises(ValueError, match="val was not generated: none of its 2 clips has an audio file"):
        datasets.load_split("audiocaps", "val", str(tmp_path / "data"), SR)
    with pytest.raises(ValueError, match="no split 'dev'"):
        datasets.load_split("audiocaps", "dev", str(tmp_path / "data"), SR)
    assert set(_elements("audiocaps", "test", str(tmp_path / "data"))) == set(layout.clips["test"])


def test_audiocaps_accepts_one_audio_folder_and_user_namings(tmp_path):
    layout = layouts.make_audiocaps(tmp_path / "release", one_folder=True)
    b = datasets.builder("audiocaps", str(tmp_path / "data"), SR)
    report = builder_base.Report()
    clips = b._read_release(layout.root, report)
    for split, expected in layout.clips.items():
        by_id = {c.id: c for c in clips[split]}
        for clip_id in expected:
            assert by_id[clip_id].path is not None and by_id[clip_id].path.parent.name == "audio"
            assert by_id[clip_id].features == expected[clip_id].features
    assert {c.id for c in clips["train"] if c.path is None} == {"zzzMissing1"}
    assert report.splits["train"]["notes"]["empty captions dropped"] == 1
    # val and test: five captions per clip, grouped from five rows.
    assert all(len(c.features["captions"]) == 5 for c in clips["test"])


def test_audiocaps_file_name_matching():
    from data_pipeline.audiocaps.builder import match_files
    from pathlib import Path

    wanted = {"abc_DEF-123", "Yxy", "q"}
    files = [Path(p) for p in ("abc_DEF-123_30.wav", "YYxy.flac", "Yxy_10.000_20.000.mp3", "q.wav", "abc.wav", "r.wav")]
    matches = match_files(files, wanted)
    assert {k: sorted(str(p) for p in v) for k, v in matches.items()} == {
        "abc_DEF-123": ["abc_DEF-123_30.wav"],
        "Yxy": ["YYxy.flac", "Yxy_10.000_20.000.mp3"],
        "q": ["q.wav"],
    }


def test_clotho_2022_needs_the_ground_truth(tmp_path):
    layout = layouts.make_clotho_2022(tmp_path / "release", ground_truth=False)
    with pytest.raises(builder_base.LayoutError, match="retrieval_ground_truth.csv"):
        prepare.prepare("clotho_2022", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)


def test_clotho_2022_reads_ground_truth_in_clotho_format_or_in_the_queries(tmp_path):
    layout = layouts.make_clotho_2022(tmp_path / "release", ground_truth=False)
    b = datasets.builder("clotho_2022", str(tmp_path / "data"), SR)
    want = {name: e.features["captions"] for name, e in layout.clips["test"].items()}
    want["lost.wav"] = ["A train passes"]
    rows = [(n, caps) for n, caps in want.items() if caps]
    # Clotho's layout: file_name, caption_1, caption_2 (empty cells dropped).
    with open(layout.root / "eval.gt.csv", "w") as f:
        f.write("file_name,caption_1,caption_2\n")
        for n, caps in rows:
            f.write(",".join(f'"{x}"' for x in [n] + caps + [""] * (2 - len(caps))) + "\n")
    clips = b._read_release(layout.root, builder_base.Report())["test"]
    assert {c.id: c.features["captions"] for c in clips} == want
    # Or the queries file itself carries file_name.
    (layout.root / "eval.gt.csv").unlink()
    with open(layout.root / "retrieval_captions.csv", "w") as f:
        f.write("caption,file_name\n")
        for n, caps in rows:
            f.writelines(f'"{c}","{n}"\n' for c in caps)
    clips = b._read_release(layout.root, builder_base.Report())["test"]
    assert {c.id: c.features["captions"] for c in clips} == want


def test_fsd50k_sentence():
    from data_pipeline.fsd50k.builder import clean_description, sentence

    assert (
        sentence(["Electric_guitar", "Guitar", "Music"], 'A riff. <a href="http://x.org/y">link</a> &amp; more.')
        == "Electric guitar, guitar, and music. A riff. link & more."
    )
    assert sentence(["Bark", "Dog"], "small dog.\r\n\r\nSee http://freesound.org/people/x (www.x.com)") == (
        "Bark and dog. Small dog. See"
    )
    assert sentence(["Rain"], "") == "Rain."
    assert sentence(["Male_speech_and_man_speaking", "Speech"], "  ") == "Male speech and man speaking and speech."
    assert clean_description("<p>Line<br/>two</p>") == "Line two"


def test_class_lists_are_checked_against_the_metadata(tmp_path):
    layout = layouts.make_esc50(tmp_path / "release")
    csv_path = layout.root / "meta/esc50.csv"
    csv_path.write_text(csv_path.read_text().replace(",0,dog,", ",0,cat,"))
    with pytest.raises(ValueError, match="esc50.csv line 2: target 0 with category 'cat'"):
        prepare.prepare("esc50", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)
    layout = layouts.make_urbansound8k(tmp_path / "us8k")
    csv_path = layout.root / "metadata/UrbanSound8K.csv"
    csv_path.write_text(csv_path.read_text().replace(",2,children_playing", ",5,children_playing"))
    with pytest.raises(ValueError, match="UrbanSound8K.csv line 3: classID 5 with class "
                                         "'children_playing' does not match the UrbanSound8K"):
        prepare.prepare("urbansound8k", data_dir=str(tmp_path / "data2"), manual_dir=str(layout.root),
                        sample_rate=SR)
    csv_path.write_text(csv_path.read_text().replace(",5,children_playing", ",two,children_playing"))
    with pytest.raises(ValueError, match="UrbanSound8K.csv line 3: invalid literal"):
        prepare.prepare("urbansound8k", data_dir=str(tmp_path / "data3"), manual_dir=str(layout.root),
                        sample_rate=SR)
    # A fold outside the release's (1-5, 1-10) is an error, not a file looked up elsewhere.
    layout = layouts.make_esc50(tmp_path / "esc_folds")
    csv_path = layout.root / "meta/esc50.csv"
    lines = csv_path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[1] = "6"
    csv_path.write_text("\n".join([lines[0], ",".join(fields)] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match="esc50.csv line 2: fold 6 is not one of the ESC-50 "
                                         "folds 1-5"):
        prepare.prepare("esc50", data_dir=str(tmp_path / "data4"), manual_dir=str(layout.root),
                        sample_rate=SR)


def test_malformed_metadata_rows_name_their_line(tmp_path):
    # An unquoted comma in a caption would silently cut it short; a short row would reach
    # int() as None. Both are errors that name the file's line.
    table = tmp_path / "captions.csv"
    table.write_text('file_name,caption_1\na.wav,"A dog barks, then a car passes."\n'
                     "b.wav,A dog barks, then a car passes.\n")
    with pytest.raises(ValueError, match="captions.csv line 3: 3 fields where the header has 2"):
        builder_base.read_table(table, ("file_name", "caption_1"))
    table.write_text('file_name,caption_1\na.wav,"A dog barks, then a car passes."\nb.wav\n')
    assert builder_base.read_table(table, ("file_name",)) == [
        {"file_name": "a.wav", "caption_1": "A dog barks, then a car passes."},
        {"file_name": "b.wav", "caption_1": ""}]
    layout = layouts.make_esc50(tmp_path / "release")
    csv_path = layout.root / "meta/esc50.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:2] + [lines[2].split(",")[0] + ",1"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="esc50.csv line 3: invalid literal"):
        prepare.prepare("esc50", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)


def test_prepare_cli(tmp_path, capsys):
    layout = layouts.make_desed(tmp_path / "release")
    args = ["desed", "--manual_dir", str(layout.root), "--data_dir", str(tmp_path / "data"), "--sample_rate", "8000"]
    assert prepare.main(args + ["--workers", "2"]) == 0
    assert set(_elements("desed", "eval", str(tmp_path / "data"), 8000)) == set(layout.clips["eval"])
    assert prepare.main(args) == 0  # already prepared: kept
    assert prepare.main(["desed", "--manual_dir", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path)]) == 1
    assert prepare.main(["desed", "--data_dir", str(tmp_path)]) == 1


def test_audiocaps_clone_reads_the_papers_release_and_says_so(tmp_path, caplog):
    # A clone of the AudioCaps repository holds dataset/ (1.0) and dataset2.0/ (2.0).
    v1, v2 = layouts.make_audiocaps_clone(tmp_path / "clone")
    for name, layout, folder in (("audiocaps", v1, "dataset"), ("audiocaps_2", v2, "dataset2.0")):
        b = datasets.builder(name, str(tmp_path / "data"), SR)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            clips = b._read_release(layout.root, builder_base.Report())
        for split in datasets.SPLITS[name]:
            by_id = {c.id: c for c in clips[split]}
            assert set(by_id) == set(layout.clips[split]) | set(layout.skipped.get(split, {})), (name, split)
            for clip_id, expected in layout.clips[split].items():
                assert by_id[clip_id].path is not None and by_id[clip_id].features == expected.features
            for clip_id, reason in layout.skipped.get(split, {}).items():
                assert (by_id[clip_id].path is None) == (reason == "missing"), (name, clip_id)
        line = next(r.getMessage() for r in caplog.records if "several AudioCaps releases" in r.getMessage())
        assert line.endswith(str(layout.root / folder)), line
        assert ("(the paper's)" in line) == (name == "audiocaps")
    # One release's folder alone is not read as the other release.
    shutil.rmtree(v1.root / "dataset")
    with pytest.raises(builder_base.LayoutError, match=r"found only .*dataset2.0/train.csv, which is "
                                                       r"AudioCaps 2.0 \(prepare it as audiocaps_2\)"):
        datasets.builder("audiocaps", str(tmp_path / "data"), SR)._read_release(v1.root, builder_base.Report())


def test_clotho_2022_finds_audio_whose_name_has_underscore_for_colon(tmp_path):
    layout = layouts.make_clotho_2022(tmp_path / "release", colon_names=True)
    data_dir = str(tmp_path / "data")
    b = prepare.prepare("clotho_2022", data_dir=data_dir, manual_dir=str(layout.root), sample_rate=SR)
    elements = _elements("clotho_2022", "test", data_dir)
    assert set(elements) == set(layout.clips["test"])
    for name in ("raindrops on metal: police background.wav", "Night: crickets.wav"):
        expected = layout.clips["test"][name]
        assert _decoded_features(b, elements[name]) == expected.features, name
        _check_audio(name, elements[name]["audio"], expected)
    report = json.loads((b.data_path / builder_base.REPORT_FILENAME).read_text())["splits"]["test"]
    assert {s["id"] for s in report["skipped"]} == {"lost.wav"}
    assert report["notes"]["file names matched with '_' for ':'"] == 2
    assert "ground-truth clips not in retrieval_audio_metadata.csv (kept)" not in report["notes"]


def test_duplicate_rows_are_refused_before_decoding(tmp_path, monkeypatch):
    decoded = []
    real_load = builder_base.audio.load
    monkeypatch.setattr(builder_base.audio, "load", lambda *a: decoded.append(a) or real_load(*a))

    def refused(name, layout, match):
        with pytest.raises(ValueError, match=match) as error:
            prepare.prepare(name, data_dir=str(tmp_path / name / "data"), manual_dir=str(layout.root),
                            sample_rate=SR)
        assert "\n" not in str(error.value) and "Two examples" not in str(error.value)
        assert not decoded

    layout = layouts.make_clotho(tmp_path / "clotho" / "release")
    table = layout.root / "clotho_captions_development.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines + [lines[1]]) + "\n")  # the first clip again, as line 5
    refused("clotho", layout, r"clotho_captions_development.csv: line 2 and line 5 both list the clip "
                              r"'Santa Motor, 2.wav' \(clotho development\); remove one")
    layout = layouts.make_esc50(tmp_path / "esc50" / "release")
    table = layout.root / "meta/esc50.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:3] + [lines[2]] + lines[3:]) + "\n")
    refused("esc50", layout, r"esc50.csv: line 3 and line 4 both list the clip '2-109505-A-21.wav'")
    # FSD50K: also a clip listed in dev's train and in its val.
    layout = layouts.make_fsd50k(tmp_path / "fsd50k" / "release")
    table = layout.root / "FSD50K.ground_truth/dev.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines + [lines[1].rsplit(",", 1)[0] + ",val"]) + "\n")
    refused("fsd50k", layout, r"dev.csv: line 2 and line 7 both list the clip '64760'")


def test_fsd50k_labels_are_checked_against_the_vocabulary(tmp_path):
    layout = layouts.make_fsd50k(tmp_path / "release")
    table = layout.root / "FSD50K.ground_truth/dev.csv"
    table.write_text(table.read_text().replace("Rain,Water", "Rain,Watr"))
    with pytest.raises(ValueError, match=r"dev.csv line 4: label 'Watr' of clip '5000' is not one of the "
                                         r"\d+ classes of .*FSD50K.ground_truth/vocabulary.csv"):
        prepare.prepare("fsd50k", data_dir=str(tmp_path / "data"), manual_dir=str(layout.root), sample_rate=SR)


def test_metadata_in_windows_1252_keeps_its_typographic_characters(tmp_path, caplog):
    table = tmp_path / "captions.csv"
    table.write_bytes(b"file_name,caption_1\na.wav,\x93Rain\x94 \x96 it costs 5\x80\n")
    with caplog.at_level(logging.WARNING):
        rows = builder_base.read_table(table, ("file_name", "caption_1"))
    assert rows == [{"file_name": "a.wav", "caption_1": "\u201cRain\u201d \u2013 it costs 5\u20ac"}]
    assert "captions.csv is not UTF-8; reading it as Windows-1252" in caplog.text
    # A byte that Windows-1252 leaves undefined (0x81): Latin-1, as before.
    table.write_bytes(b"file_name,caption_1\na.wav,x\x81y\n")
    assert builder_base.read_table(table, ("file_name",))[0]["caption_1"] == "x\x81y"
    table.write_text("file_name,caption_1\na.wav,\u201cRain\u201d\n", encoding="utf-8-sig")
    assert builder_base.read_table(table, ("file_name",))[0]["caption_1"] == "\u201cRain\u201d"


def test_too_short_clips_are_skipped_and_clipping_is_counted(tmp_path, caplog):
    import soxr

    layout = layouts.make_esc50(tmp_path / "release")
    # One sample at 44.1 kHz resamples to none at 16 kHz.
    short = "1-100032-A-0.wav"
    layouts.sf.write(layout.root / "audio" / short, np.full(1, 0.1, np.float32), 44100, subtype="PCM_16")
    # A float WAV beyond full scale (peak 1.6).
    loud = "2-109505-A-21.wav"
    layouts.write_tone(layout.root / "audio" / loud, layouts.Tone(44100, (440.0,), amp=1.6), subtype="FLOAT")
    data_dir = str(tmp_path / "data")
    with caplog.at_level(logging.INFO):
        b = prepare.prepare("esc50", data_dir=data_dir, manual_dir=str(layout.root), sample_rate=SR)
    report = json.loads((b.data_path / builder_base.REPORT_FILENAME).read_text())["splits"]["train"]
    assert {s["id"]: s["reason"] for s in report["skipped"]} == {short: "too short", **layout.skipped["train"]}
    assert report["skipped_by_reason"]["too short"] == 1
    assert report["prepared"] == len(layout.clips["train"]) - 1
    assert report["notes"] == {"clips with samples clipped at int16 full scale": 1}
    elements = _elements("esc50", "train", data_dir)
    assert short not in elements
    # The stored clip: the file resampled (soxr HQ directly), rounded and clipped to int16.
    source, rate = layouts.sf.read(layout.root / "audio" / loud, dtype="float32")
    resampled = soxr.resample(source, rate, SR, quality="HQ")
    want = np.clip(np.rint(resampled.astype(np.float64) * 32768), -32768, 32767)
    np.testing.assert_array_equal(elements[loud]["audio"], want)
    peak = float(np.max(np.abs(resampled)))
    assert peak > 1.5
    assert (f"esc50 train: 1 clips had samples beyond int16 full scale, clipped to it (worst peak {peak:.3f}, "
            f"{20 * np.log10(peak):+.1f} dBFS, in {loud})") in caplog.text
