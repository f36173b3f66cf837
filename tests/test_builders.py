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
