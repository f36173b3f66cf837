"""Tiny copies of each dataset release, in the release's own folder structure.

Each `make_<name>(root)` writes the release's metadata files (real file names and columns)
and a few short clips of generated audio at the release's rate and format, and returns a
`Layout` saying what a correct preparation must contain:

- `layout.clips[split][id]`: the expected element (its features, and `tone`, the
  analytic signal the file holds, from which the audio at any rate can be computed
  independently of the code under test);
- `layout.skipped[split][id]`: the reason the clip must be skipped ("missing" or
  "undecodable"): every layout has missing and corrupt audio among its clips.

Other tests use these to prepare real datasets with `data_pipeline.prepare.prepare`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


@dataclasses.dataclass(frozen=True)
class Tone:
    """A sum-free test signal: channel c is amp * sin(2 pi freqs[c] t + c), `seconds` long."""

    rate: int
    freqs: tuple[float, ...]
    seconds: float = 0.5
    amp: float = 0.5

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.rate))

    def channels(self, rate: int | None = None, frames: int | None = None) -> np.ndarray:
        rate = rate or self.rate
        n = frames if frames is not None else self.frames
        t = np.arange(n) / rate
        return np.stack([self.amp * np.sin(2 * np.pi * f * t + c) for c, f in enumerate(self.freqs)], axis=1)

    def mono(self, rate: int) -> np.ndarray:
        """What decoding, downmixing and resampling to `rate` should give, computed analytically."""
        frames = int(round(self.frames * rate / self.rate))
        return self.channels(rate, frames).mean(axis=1)


@dataclasses.dataclass
class Expected:
    features: dict[str, Any]
    tone: Tone
    lossy: bool = False  # mp3/ogg: compare loosely (codec delay and noise)
    subtype: str = "PCM_16"


@dataclasses.dataclass
class Layout:
    root: Path
    clips: dict[str, dict[str, Expected]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    metadata_files: tuple[str, ...] = ()  # required files, relative to root

    def expect(self, split: str, clip_id: str, expected: Expected) -> None:
        self.clips.setdefault(split, {})[clip_id] = expected

    def expect_skip(self, split: str, clip_id: str, reason: str) -> None:
        self.skipped.setdefault(split, {})[clip_id] = reason


_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def write_tone(path: Path, tone: Tone, subtype: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _FORMATS[path.suffix.lower()]
    subtype = subtype or {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    sf.write(str(path), tone.channels(), tone.rate, subtype=subtype, format=fmt)


def write_corrupt(path: Path) -> None:
    """Bytes no decoder accepts, under an audio file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _freq(i: int) -> float:
    # Distinct tones well inside every target band (>= 8 kHz sample rate).
    return 220.0 + 97.0 * i


# --------------------------------------------------------------------------------------


def make_audiocaps(root: Path, *, one_folder: bool = False, csv_dir: str = "", specs=None,
                   freq_offset: int = 0) -> Layout:
    """AudioCaps: train/val/test.csv (audiocap_id,youtube_id,start_time,caption) in root (or
    root/csv_dir); audio named by YouTube id in the ways users' downloads name it, in split
    folders (or one folder). `specs`: other clips than AudioCaps 1.0's default ones."""
    root = Path(root)
    lay = Layout(root, metadata_files=tuple(str(Path(csv_dir) / f"{s}.csv") for s in ("train", "val", "test")))
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    # (split, youtube_id, start, captions, file name pattern, outcome)
    specs = specs or [
        ("train", "--0PQM4-hqg", 30, ["A dog barks twice"], "{id}.wav", "ok"),
        ("train", "a_b-CDEfg12", 0, ["Rain falls on a roof", "  "], "Y{id}.flac", "ok"),
        ("train", "Yk3mJ8aZ0x1", 10, ["A man speaks"], "{id}_{start}.wav", "ok"),
        ("train", "zzzMissing1", 20, ["Birds chirp"], None, "missing"),
        ("val", "vAl_000001a", 40, [f"Wind blows hard {k}" for k in range(5)], "{id}_{start}.000.ogg", "ok"),
        ("val", "vAl_000002b", 0, [f"Engine idles {k}" for k in range(5)], "{id}.wav", "undecodable"),
        ("test", "tEst-00001A", 70, [f"A bell rings {k}" for k in range(5)], "Y{id}_{start}.000_80.000.mp3", "ok"),
        ("test", "tEst-00002B", 5, [f"Water runs {k}" for k in range(5)], "{id}.wav", "ok"),
    ]
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    next_id = 91000
    for i, (split, ytid, start, captions, pattern, outcome) in enumerate(specs):
        for caption in captions:
            rows[split].append([next_id, ytid, start, caption])
            next_id += 1
        if pattern is not None:
            folder = root / "audio" if one_folder else root / "audio" / split
            path = folder / pattern.format(id=ytid, start=start)
            tone = Tone(44100 if path.suffix != ".mp3" else 48000, (_freq(i + freq_offset),))
            if outcome == "undecodable":
                write_corrupt(path)
            else:
                write_tone(path, tone)
        if outcome == "ok":
            lay.expect(split, ytid, Expected({"captions": [c.strip() for c in captions if c.strip()]}, tone,
                                             lossy=pattern.endswith((".ogg", ".mp3"))))
        else:
            lay.expect_skip(split, ytid, outcome)
    for split in rows:
        _write_csv(root / csv_dir / f"{split}.csv", header, rows[split])
    return lay


# AudioCaps 2.0's clips in the tiny layout: none of 1.0's, frequencies of their own.
AUDIOCAPS_2_SPECS = [
    ("train", "v2Train0001", 30, ["A cat meows"], "{id}.wav", "ok"),
    ("train", "v2Missing01", 0, ["A car horn"], None, "missing"),
    ("val", "v2Val_00001", 10, [f"A drum beats {k}" for k in range(5)], "{id}.flac", "ok"),
    ("test", "v2Test-0001", 20, [f"Leaves rustle {k}" for k in range(5)], "Y{id}.wav", "ok"),
    ("test", "v2Test-0002", 0, [f"Glass breaks {k}" for k in range(5)], "{id}_{start}.wav", "ok"),
]


def make_audiocaps_clone(root: Path) -> tuple[Layout, Layout]:
    """A clone of the AudioCaps repository with the downloaded audio: AudioCaps 1.0's CSVs in
    dataset/, 2.0's in dataset2.0/, the audio of both in audio/<split>/. Returns the two
    releases' layouts (1.0, 2.0)."""
    v1 = make_audiocaps(root, csv_dir="dataset")
    v2 = make_audiocaps(root, csv_dir="dataset2.0", specs=AUDIOCAPS_2_SPECS, freq_offset=20)
    return v1, v2


def make_clotho(root: Path) -> Layout:
    """Clotho v2.1: clotho_captions_<split>.csv (file_name, caption_1..caption_5); audio in
    development/, validation/, evaluation/ (44.1 kHz wav)."""
    root = Path(root)
    splits = ("development", "validation", "evaluation")
    lay = Layout(root, metadata_files=tuple(f"clotho_captions_{s}.csv" for s in splits))
    header = ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
    outcomes = {
        "development": [("Santa Motor, 2.wav", "ok"), ("rain on tin roof.wav", "ok"), ("gone.wav", "missing")],
        "validation": [("01 crickets.wav", "ok"), ("door_slam.wav", "ok")],
        "evaluation": [("bell tower.wav", "ok"), ("broken.wav", "undecodable")],
    }
    i = 0
    for split in splits:
        rows = []
        for name, outcome in outcomes[split]:
            captions = [f"{name[:-4]} sound, take {k}." for k in range(1, 6)]
            rows.append([name] + captions)
            tone = Tone(44100, (_freq(i),))
            i += 1
            if outcome == "ok":
                write_tone(root / split / name, tone)
                lay.expect(split, name, Expected({"captions": captions}, tone))
            else:
                if outcome == "undecodable":
                    write_corrupt(root / split / name)
                lay.expect_skip(split, name, outcome)
        _write_csv(root / f"clotho_captions_{split}.csv", header, rows)
    return lay


CLOTHO_2022_GROUND_TRUTH = "retrieval_ground_truth.csv"


def make_clotho_2022(root: Path, *, ground_truth: bool = True, colon_names: bool = False) -> Layout:
    """DCASE 2022 task 6B evaluation: retrieval_captions.csv (caption), retrieval_audio_metadata.csv
    (file_name, keywords, sound_id, sound_link, start_end_samples, manufacturer, license), audio
    in test/ (as retrieval_audio.7z unpacks), and the ground truth (caption, file_name).

    `colon_names`: two more clips as the release spells them, with ":" in the metadata's name
    where the audio file has "_"; the ground truth names one with ":", the other with "_"."""
    root = Path(root)
    lay = Layout(root, metadata_files=("retrieval_captions.csv", "retrieval_audio_metadata.csv"))
    specs = [
        ("harbour gulls.wav", ["Seagulls cry over a harbour"], "ok"),
        ("keys, jingling.wav", ["Keys jingle in a pocket", "Someone shakes a bunch of keys"], "ok"),
        ("no query.wav", [], "ok"),  # a retrieval candidate that no query points to
        ("lost.wav", ["A train passes"], "missing"),
    ]
    if colon_names:
        specs += [("raindrops on metal: police background.wav", ["Rain drums on a metal roof"], "ok"),
                  ("Night: crickets.wav", ["Crickets chirp at night", "Insects chirp"], "ok")]
    queries, gt, meta = [], [], []
    for i, (name, captions, outcome) in enumerate(specs):
        meta.append([name, "kw1;kw2", 1000 + i, f"https://freesound.org/s/{1000 + i}", "[0, 100]", "user", "CC BY"])
        on_disk = name.replace(":", "_")
        for c in captions:
            queries.append([c])
            gt.append([c, on_disk if name.startswith("Night") else name])
        tone = Tone(44100, (_freq(i + 3),))
        if outcome == "ok":
            write_tone(root / "test" / on_disk, tone)
            lay.expect("test", name, Expected({"captions": captions}, tone))
        else:
            lay.expect_skip("test", name, outcome)
    _write_csv(root / "retrieval_captions.csv", ["caption"], queries)
    _write_csv(
        root / "retrieval_audio_metadata.csv",
        ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"],
        meta,
    )
    if ground_truth:
        _write_csv(root / CLOTHO_2022_GROUND_TRUTH, ["caption", "file_name"], gt)
    return lay


def make_macs(root: Path) -> Layout:
    """MACS: MACS.yaml (files: filename, annotations: annotator_id, sentence, tags), audio from
    the TAU Urban Acoustic Scenes 2019 development set (48 kHz, 24-bit, stereo)."""
    root = Path(root)
    lay = Layout(root, metadata_files=("MACS.yaml",))
    audio_dir = root / "TAU-urban-acoustic-scenes-2019-development" / "audio"
    specs = [
        ("airport-barcelona-0-0-a.wav", ["people talk in a large hall", "a voice on the speakers"], "ok"),
        ("street_traffic-lyon-1-50-a.wav", ["cars pass by", "traffic noise", "a horn honks"], "ok"),
        ("park-paris-2-10-a.wav", ["birds sing"], "missing"),
    ]
    lines = ["files:"]
    for i, (name, sentences, outcome) in enumerate(specs):
        lines.append(f"- filename: {name}")
        lines.append("  annotations:")
        for k, s in enumerate(sentences):
            lines += [f"  - annotator_id: {100 + k}", f"    sentence: {s}", "    tags:", "    - tag_a", "    - tag_b"]
        tone = Tone(48000, (_freq(i), _freq(i) * 1.5))
        if outcome == "ok":
            write_tone(audio_dir / name, tone, subtype="PCM_24")
            lay.expect("train", name, Expected({"captions": sentences}, tone, subtype="PCM_24"))
        else:
            lay.expect_skip("train", name, outcome)
    (root / "MACS.yaml").write_text("\n".join(lines) + "\n")
    return lay


def make_fsd50k(root: Path) -> Layout:
    """FSD50K: FSD50K.ground_truth/{dev,eval}.csv, FSD50K.metadata/{dev,eval}_clips_info_FSD50K.json,
    FSD50K.dev_audio/ and FSD50K.eval_audio/ (44.1 kHz wav)."""
    root = Path(root)
    lay = Layout(
        root,
        metadata_files=(
            "FSD50K.ground_truth/dev.csv",
            "FSD50K.ground_truth/eval.csv",
            "FSD50K.ground_truth/vocabulary.csv",
            "FSD50K.metadata/dev_clips_info_FSD50K.json",
            "FSD50K.metadata/eval_clips_info_FSD50K.json",
        ),
    )
    # (fname, labels, description or None (no metadata entry), dev split or "test", outcome,
    #  the caption the builder must make of them)
    specs = [
        ("64760", "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music",
         'A short riff. <a href="https://example.org/x">More</a> at http://example.org &amp; friends', "train", "ok",
         "Electric guitar, guitar, plucked string instrument, musical instrument, and music. "
         "A short riff. More at & friends"),
        ("16399", "Bark,Dog,Domestic_animals_and_pets,Animal", "small dog barking.\r\n\r\nRecorded outside.",
         "train", "ok", "Bark, dog, domestic animals and pets, and animal. Small dog barking. Recorded outside."),
        ("5000", "Rain,Water", None, "train", "ok", "Rain and water."),
        ("71", "Cough,Human_voice", "A cough.", "train", "missing", None),
        ("88", "Walk_and_footsteps", "Steps on gravel", "val", "ok", "Walk and footsteps. Steps on gravel"),
        ("123", "Bell,Church_bell", "", "test", "ok", "Bell and church bell."),
        ("124", "Siren", "Police siren", "test", "undecodable", None),
    ]
    dev_rows, eval_rows, dev_info, eval_info = [], [], {}, {}
    for i, (fname, labels, description, split, outcome, caption) in enumerate(specs):
        mids = ",".join(f"/m/{k:04d}" for k in range(len(labels.split(","))))
        info = {"title": f"clip {fname}", "description": description, "tags": ["a"], "license": "cc", "uploader": "u"}
        if split == "test":
            eval_rows.append([fname, labels, mids])
            folder, infos = "FSD50K.eval_audio", eval_info
        else:
            dev_rows.append([fname, labels, mids, split])
            folder, infos = "FSD50K.dev_audio", dev_info
        if description is not None:
            infos[fname] = info
        tone = Tone(44100, (_freq(i),))
        path = root / folder / f"{fname}.wav"
        if outcome == "ok":
            write_tone(path, tone)
            lay.expect(split, fname, Expected({"captions": [caption], "labels": labels.split(",")}, tone))
        else:
            if outcome == "undecodable":
                write_corrupt(path)
            lay.expect_skip(split, fname, outcome)
    _write_csv(root / "FSD50K.ground_truth/dev.csv", ["fname", "labels", "mids", "split"], dev_rows)
    _write_csv(root / "FSD50K.ground_truth/eval.csv", ["fname", "labels", "mids"], eval_rows)
    # vocabulary.csv: index,label,mid without a header; classes beyond the ones used, too.
    labels = sorted({label for spec in specs for label in spec[1].split(",")} | {"Accordion", "Zipper_(clothing)"})
    with open(root / "FSD50K.ground_truth/vocabulary.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([k, label, f"/m/{k:05d}"] for k, label in enumerate(labels))
    (root / "FSD50K.metadata").mkdir(parents=True, exist_ok=True)
    (root / "FSD50K.metadata/dev_clips_info_FSD50K.json").write_text(json.dumps(dev_info))
    (root / "FSD50K.metadata/eval_clips_info_FSD50K.json").write_text(json.dumps(eval_info))
    return lay


def make_esc50(root: Path) -> Layout:
    """ESC-50: meta/esc50.csv (filename,fold,target,category,esc10,src_file,take), audio/ (44.1 kHz)."""
    root = Path(root)
    lay = Layout(root, metadata_files=("meta/esc50.csv",))
    specs = [("1-100032-A-0.wav", 1, 0, "dog", "ok"), ("2-109505-A-21.wav", 2, 21, "sneezing", "ok"),
             ("5-200334-B-49.wav", 5, 49, "hand_saw", "ok"), ("3-1-A-10.wav", 3, 10, "rain", "undecodable"),
             ("4-2-A-40.wav", 4, 40, "helicopter", "missing")]  # fmt: skip
    rows = []
    for i, (name, fold, target, category, outcome) in enumerate(specs):
        rows.append([name, fold, target, category, str(target in (0, 10, 40)), name.split("-")[1], name[-7]])
        tone = Tone(44100, (_freq(i),))
        if outcome == "ok":
            write_tone(root / "audio" / name, tone)
            lay.expect("train", name, Expected({"label": category, "fold": fold}, tone))
        else:
            if outcome == "undecodable":
                write_corrupt(root / "audio" / name)
            lay.expect_skip("train", name, outcome)
    _write_csv(root / "meta/esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return lay


def make_urbansound8k(root: Path) -> Layout:
    """UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold<k>/ with the release's mix of rates,
    channel counts and bit depths (24-bit stereo, 8-bit unsigned mono, float, ADPCM)."""
    root = Path(root)
    lay = Layout(root, metadata_files=("metadata/UrbanSound8K.csv",))
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    specs = [
        ("100032-3-0-0.wav", 1, 3, "dog_bark", Tone(48000, (440.0, 660.0)), "PCM_24", "ok"),
        ("100263-2-0-117.wav", 1, 2, "children_playing", Tone(11025, (300.0,)), "PCM_U8", "ok"),
        ("100648-1-0-0.wav", 2, 1, "car_horn", Tone(96000, (523.0,)), "FLOAT", "ok"),
        ("101415-3-0-2.wav", 10, 3, "dog_bark", Tone(22050, (350.0, 700.0)), "IMA_ADPCM", "ok"),
        ("102305-6-0-0.wav", 10, 6, "gun_shot", Tone(44100, (250.0,)), "PCM_16", "missing"),
    ]
    rows = []
    for name, fold, class_id, cls, tone, subtype, outcome in specs:
        rows.append([name, name.split("-")[0], 0.0, tone.seconds, 1, fold, class_id, cls])
        if outcome == "ok":
            write_tone(root / "audio" / f"fold{fold}" / name, tone, subtype=subtype)
            lay.expect("train", name, Expected({"label": cls, "fold": fold}, tone, subtype=subtype))
        else:
            lay.expect_skip("train", name, outcome)
    _write_csv(root / "metadata/UrbanSound8K.csv", header, rows)
    return lay


def make_desed(root: Path) -> Layout:
    """DESED public evaluation: metadata/eval/public.tsv (filename, onset, offset, event_label;
    a clip without events has a row with empty fields), audio/eval/public/ (44.1 kHz)."""
    root = Path(root)
    lay = Layout(root, metadata_files=("metadata/eval/public.tsv",))
    audio_dir = root / "audio/eval/public"
    specs = [
        ("YabcDEF12345_30.000_40.000.wav", [(0.05, 0.25, "Dog"), (0.2, 0.45, "Speech")], "ok"),
        ("Yquiet0000001_0.000_10.000.wav", [], "ok"),
        ("Ymissing00001_0.000_10.000.wav", [(0.0, 0.5, "Cat")], "missing"),
        ("Ycorrupt00001_0.000_10.000.wav", [(0.1, 0.2, "Blender")], "undecodable"),
        # More clips with events, so that a validation/test split of the release can hold
        # events on both sides (the SED threshold is chosen on one, F1 scored on the other).
        ("Ycat000000001_0.000_10.000.wav", [(0.1, 0.4, "Cat")], "ok"),
        ("Ydog000000002_5.000_15.000.wav", [(0.0, 0.3, "Dog"), (0.25, 0.5, "Alarm_bell_ringing")],
         "ok"),
    ]
    rows = []
    for i, (name, events, outcome) in enumerate(specs):
        rows += [[name, f"{on:.3f}", f"{off:.3f}", label] for on, off, label in events] or [[name, "", "", ""]]
        tone = Tone(44100, (_freq(i),))
        if outcome == "ok":
            write_tone(audio_dir / name, tone)
            lay.expect("eval", name, Expected({"events": events}, tone))
        else:
            if outcome == "undecodable":
                write_corrupt(audio_dir / name)
            lay.expect_skip("eval", name, outcome)
    # A clip in the audio folder without a row in public.tsv: kept, with no events.
    extra = "Yunlisted0001_0.000_10.000.wav"
    tone = Tone(44100, (_freq(9),))
    write_tone(audio_dir / extra, tone)
    lay.expect("eval", extra, Expected({"events": []}, tone))
    _write_csv(root / "metadata/eval/public.tsv", ["filename", "onset", "offset", "event_label"], rows, "\t")
    return lay


MAKERS = {
    "audiocaps": make_audiocaps,
    "audiocaps_2": lambda root: make_audiocaps_clone(root)[1],
    "clotho": make_clotho,
    "clotho_2022": make_clotho_2022,
    "macs": make_macs,
    "fsd50k": make_fsd50k,
    "esc50": make_esc50,
    "urbansound8k": make_urbansound8k,
    "desed": make_desed,
}
