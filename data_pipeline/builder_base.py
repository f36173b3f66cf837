"""What every dataset builder shares: finding a release's files, decoding, skipping, reporting.

A builder for one release (AudioCaps, Clotho, ...) only reads that release's metadata into
`Clip`s: an id, the resolved audio file (or None) and the element's other features. This
module does the rest the same way for all of them:

- one TFDS BuilderConfig per sample rate, so each model rate is prepared once;
- decoding on a thread pool, so file reads and resampling overlap TFDS's serialisation
  (TFDS then stores the examples in the order of its hashed keys, not the release's: a
  fixed order, the same on every read);
- audio stored as raw int16 bytes (`Encoding.BYTES`): a quarter of the default int64
  encoding, and decoding it in tf.data is a `decode_raw`, not an audio codec;
- missing and undecodable clips, and clips too short to hold one sample at the model's
  rate, skipped, counted, logged, and listed in
  `DATA_DIR/<name>/<config>/<version>/skipped.json` (written inside TFDS's temporary
  directory, so it appears atomically with the prepared data);
- clips with samples beyond int16 full scale (float WAVs above 1, or resampling overshoot
  of full-scale audio) clipped to it, counted in the report and logged with the worst peak;
- a clip listed twice in a split refused before any decoding, with the two rows that list it
  (TFDS would fail only after decoding, on the shared key).

Release files are looked up first where the release puts them, then anywhere below the
manual dir, so a user may point at the folder that contains the release, or keep audio in
one folder or in one folder per split.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import audio

log = logging.getLogger(__name__)

REPORT_FILENAME = "skipped.json"
# Rates with a predefined config (so `tfds.builder("clotho/32000hz")` works); any other
# rate gets a config built on the fly by `sample_rate_config`.
PREDEFINED_RATES = (16000, 22050, 32000, 44100, 48000)
# Preference order when one clip has several files (e.g. both .wav and .mp3 downloaded).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".aif")
# How deep below the manual dir a release's metadata file may sit.
_SEARCH_DEPTH = 3
# Interval of the progress lines logged while a split is decoded.
_PROGRESS_SECONDS = 30.0


class LayoutError(FileNotFoundError):
    """The manual dir does not hold the release layout; the message names the expected file."""


class Pcm16Audio(tfds.features.Audio):
    """tfds Audio (int16, with its sample rate) whose arrays really are stored as raw bytes.

    TFDS 4.9.10's Audio.encode_example returns numpy input as is, skipping the Tensor
    encoding, so `encoding=BYTES` would fail on arrays; encode through Tensor instead."""

    def __init__(self, sample_rate: int, doc: str | None = None):
        super().__init__(
            shape=(None,), dtype=np.int16, sample_rate=sample_rate, encoding=tfds.features.Encoding.BYTES, doc=doc
        )

    def encode_example(self, audio_array):
        return tfds.features.Tensor.encode_example(self, np.asarray(audio_array, np.int16))

    @classmethod
    def from_json_content(cls, value) -> "Pcm16Audio":
        # For tfds.builder_from_directory: shape, dtype and encoding are fixed by the class.
        rate = value["sample_rate"] if isinstance(value, dict) else value.sample_rate
        return cls(sample_rate=int(rate))


@dataclasses.dataclass(eq=False)
class SampleRateConfig(tfds.core.BuilderConfig):
    sample_rate: int = 32000


def sample_rate_config(sample_rate: int) -> SampleRateConfig:
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    return SampleRateConfig(
        name=f"{sample_rate}hz",
        description=f"mono int16 PCM resampled to {sample_rate} Hz",
        sample_rate=sample_rate,
    )


@dataclasses.dataclass(frozen=True)
class Clip:
    """One element to prepare: `features` holds everything but "id" and "audio"."""

    id: str
    path: Path | None
    features: Mapping[str, Any]
    expected: str = ""  # where the release layout puts the audio (named in the report)
    # Where the release lists the clip: (metadata file, "line 12"), named when it is listed twice.
    listed_at: tuple[str, str] | None = None


class Report:
    """Per split: examples written, clips skipped (with reason), and counted notes."""

    def __init__(self):
        self.splits: dict[str, dict[str, Any]] = {}

    def _split(self, split: str) -> dict[str, Any]:
        return self.splits.setdefault(
            split, {"prepared": 0, "skipped": [], "notes": collections.Counter(), "generated": True}
        )

    def prepared(self, split: str) -> None:
        self._split(split)["prepared"] += 1

    def count(self, split: str) -> int:
        return self._split(split)["prepared"]

    def skip(self, split: str, clip_id: str, reason: str, path: str | None = None, detail: str = "") -> None:
        entry = {"id": clip_id, "reason": reason, "path": path}
        if detail:
            entry["detail"] = detail
        self._split(split)["skipped"].append(entry)

    def note(self, split: str, what: str, count: int = 1) -> None:
        if count:
            self._split(split)["notes"][what] += count

    def not_generated(self, split: str, why: str) -> None:
        entry = self._split(split)
        entry["generated"] = False
        entry["why_not_generated"] = why

    def to_json(self, **header) -> dict[str, Any]:
        splits = {}
        for name, entry in self.splits.items():
            reasons = collections.Counter(s["reason"] for s in entry["skipped"])
            splits[name] = {
                "generated": entry["generated"],
                **({"why_not_generated": entry["why_not_generated"]} if not entry["generated"] else {}),
                "prepared": entry["prepared"],
                "skipped_total": len(entry["skipped"]),
                "skipped_by_reason": dict(sorted(reasons.items())),
                "notes": dict(sorted(entry["notes"].items())),
                "skipped": entry["skipped"],
            }
        return {**header, "skipped_total": sum(s["skipped_total"] for s in splits.values()), "splits": splits}

    def summary_lines(self, name: str) -> list[str]:
        lines = []
        for split, entry in self.splits.items():
            reasons = collections.Counter(s["reason"] for s in entry["skipped"])
            why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
            state = "" if entry["generated"] else f" NOT GENERATED ({entry.get('why_not_generated')})"
            line = f"{name} {split}: {entry['prepared']} clips prepared, skipped {why}{state}"
            if entry["notes"]:
                line += "; " + ", ".join(f"{what}: {n}" for what, n in sorted(entry["notes"].items()))
            lines.append(line)
        return lines


# --------------------------------------------------------------------------------------
# Reading a release.


def find_release_file(manual_dir: Path, relpath: str) -> Path:
    """`manual_dir/relpath`, else the one file below manual_dir whose path ends in relpath.

    Raises LayoutError naming `manual_dir/relpath` when there is none, and listing the
    candidates when there are several.
    """
    manual_dir = Path(manual_dir)
    direct = manual_dir / relpath
    if direct.is_file():
        return direct
    found = find_release_files(manual_dir, relpath)
    if not found:
        raise LayoutError(f"expected release file {direct} (not found there or below {manual_dir})")
    if len(found) > 1:
        raise LayoutError(
            f"found several copies of {relpath} below {manual_dir}: "
            + ", ".join(str(f) for f in found)
            + "; point --manual_dir at the one release to use"
        )
    return found[0]


def find_release_files(manual_dir: Path, relpath: str) -> list[Path]:
    """Every file below manual_dir (at most a few folders deep) whose path ends in relpath,
    sorted by path."""
    manual_dir = Path(manual_dir)
    tail = Path(relpath).parts
    found = []
    for dirpath, dirnames, filenames in os.walk(manual_dir):
        depth = len(Path(dirpath).relative_to(manual_dir).parts)
        if depth >= _SEARCH_DEPTH + len(tail):
            dirnames.clear()
        dirnames.sort()
        if tail[-1] in filenames:
            candidate = Path(dirpath) / tail[-1]
            if candidate.parts[-len(tail):] == tail:
                found.append(candidate)
    return sorted(found)


def release_root(metadata_file: Path, relpath: str) -> Path:
    """The folder that plays the role of the release's top level for `metadata_file`."""
    return metadata_file.parents[len(Path(relpath).parts) - 1]


def read_table(path: Path, required: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV/TSV as dicts; the header must hold the `required` columns.

    Releases are UTF-8 (some with a BOM); a file that is not is read as Windows-1252, else
    as Latin-1, and logged, since some Freesound-derived metadata was exported that way.
    Windows-1252 comes first: it is what spreadsheet exports on Windows write, and it maps
    bytes 0x80-0x9F to the typographic quotes and dashes where Latin-1 has control characters.
    """
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        log.warning("%s is not UTF-8; reading it as %s", path,
                    {"cp1252": "Windows-1252", "latin-1": "Latin-1"}[encoding])
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks the column(s) {missing}")
    reader.fieldnames = header
    rows = []
    for row in reader:
        # More fields than the header: an unquoted delimiter inside a value (a caption
        # with a comma) would otherwise lose the rest of the value without a word.
        if None in row:
            raise ValueError(
                f"{path} line {reader.line_num}: {len(header) + len(row[None])} fields where the "
                f"header has {len(header)} (a value with an unquoted {delimiter!r}?)")
        # Fewer fields: the missing trailing ones are empty, and the columns' own checks
        # (numbers, required values) then name the line.
        rows.append({k: (v or "").strip() for k, v in row.items()})
    return rows


@dataclasses.dataclass(frozen=True)
class FoldedLabels:
    """A release that lists one labelled clip per CSV row with its cross-validation fold
    (ESC-50, UrbanSound8K): which columns hold what, and where the audio lies."""

    dataset: str  # named in errors
    metadata: str  # the CSV, relative to the release root
    classes: Sequence[str]  # class names by index
    file_column: str
    fold_column: str
    index_column: str  # the class index
    name_column: str  # the class name, checked against `classes[index]`
    folder_per_fold: bool  # audio/fold<k>/<file> rather than audio/<file>
    folds: int  # the release's folds are 1..folds


def read_folded_labels(manual_dir: Path, layout: FoldedLabels) -> list[Clip]:
    """Clips with features {"label": class name, "fold": int}; a row whose index and name
    disagree with the class list, or whose numbers do not parse, is an error naming its
    line (the release is damaged, so no clip of it is trusted)."""
    meta = find_release_file(manual_dir, layout.metadata)
    root = release_root(meta, layout.metadata)
    index = AudioIndex(manual_dir)
    columns = (layout.file_column, layout.fold_column, layout.index_column, layout.name_column)
    clips = []
    for line, row in enumerate(read_table(meta, columns), 2):
        try:
            class_index, fold = int(row[layout.index_column]), int(row[layout.fold_column])
        except ValueError as e:
            raise ValueError(f"{meta} line {line}: {e}") from e
        if not 1 <= fold <= layout.folds:
            raise ValueError(f"{meta} line {line}: {layout.fold_column} {fold} is not one of "
                             f"the {layout.dataset} folds 1-{layout.folds}")
        name = row[layout.name_column]
        if not 0 <= class_index < len(layout.classes) or layout.classes[class_index] != name:
            raise ValueError(
                f"{meta} line {line}: {layout.index_column} {class_index} with "
                f"{layout.name_column} {name!r} does not match the {layout.dataset} class list")
        file = row[layout.file_column]
        folder = root / "audio" / f"fold{fold}" if layout.folder_per_fold else root / "audio"
        split_dirs = (f"fold{fold}",) if layout.folder_per_fold else ()
        clips.append(Clip(id=file, path=index.find(file, expected=folder / file,
                                                   split_dirs=split_dirs),
                          features={"label": name, "fold": fold}, expected=str(folder / file),
                          listed_at=(str(meta), f"line {line}")))
    return clips


def clean_captions(captions: Iterable[str | None], split: str, report: Report) -> list[str]:
    """Stripped captions that hold a word; dropped ones (empty, or punctuation alone such
    as ".") are counted in the report."""
    captions = list(captions)
    kept = [c.strip() for c in captions if c is not None and _WORD.search(c)]
    report.note(split, "empty captions dropped", len(captions) - len(kept))
    return kept


_WORD = re.compile(r"\w")


class AudioIndex:
    """Every audio file below a root, looked up by file name or stem."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith("._"):
                    self.files.append(Path(dirpath) / f)
        self._by_name = collections.defaultdict(list)
        self._by_stem = collections.defaultdict(list)
        for f in self.files:
            self._by_name[f.name].append(f)
            self._by_stem[f.stem].append(f)

    def find(self, name: str, *, expected: Path | None = None, split_dirs: Sequence[str] = ()) -> Path | None:
        """The release's own path if it exists, else a file named `name` (or with its stem
        and another audio extension) anywhere below the root; None if there is none."""
        if expected is not None and expected.is_file():
            return expected
        candidates = self._by_name.get(name) or self._by_stem.get(_strip_audio_ext(name)) or []
        return self.choose(candidates, split_dirs)

    def choose(self, candidates: Sequence[Path], split_dirs: Sequence[str] = ()) -> Path | None:
        """Among several files for one clip: one in a folder named after the split, then by
        extension preference (lossless first), then by path."""
        if not candidates:
            return None
        wanted = {d.lower() for d in split_dirs}

        def rank(p: Path):
            in_split = any(part.lower() in wanted for part in p.relative_to(self.root).parts[:-1])
            return (not in_split, AUDIO_EXTENSIONS.index(p.suffix.lower()), str(p))

        return min(candidates, key=rank)


def _strip_audio_ext(name: str) -> str:
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in AUDIO_EXTENSIONS else name


# --------------------------------------------------------------------------------------
# The builder.


class AudioDatasetBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the release builders. Subclasses define `name`, `SPLITS` (the splits a full
    release yields), `_features`, `_read_release`, `MANUAL_DOWNLOAD_INSTRUCTIONS`, and the
    DatasetInfo texts (`DESCRIPTION`, `HOMEPAGE`, `CITATION`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [sample_rate_config(sr) for sr in PREDEFINED_RATES]
    DEFAULT_CONFIG_NAME = "32000hz"
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""
    SPLITS: tuple[str, ...] = ()

    # Threads decoding audio while TFDS serialises; None = one per core (at most 8).
    decode_workers: int | None = None

    @abc.abstractmethod
    def _features(self) -> dict[str, Any]:
        """Feature connectors besides "id" and "audio"."""

    @abc.abstractmethod
    def _read_release(self, manual_dir: Path, report: Report) -> dict[str, list[Clip]]:
        """Reads the release's metadata: split -> clips (path None where audio is missing).

        Raises LayoutError naming a metadata file that is not there."""

    @property
    def sample_rate(self) -> int:
        return self.builder_config.sample_rate

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "audio": Pcm16Audio(self.sample_rate, doc="mono int16 PCM"),
                    **self._features(),
                }
            ),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    def _split_generators(self, dl_manager):
        manual_dir = Path(dl_manager.manual_dir)
        self._report = Report()
        self._started = time.time()
        log.info("%s: reading the release in %s", self.name, manual_dir)
        clips_by_split = self._read_release(manual_dir, self._report)
        for split, clips in clips_by_split.items():
            refuse_duplicates(self.name, split, clips)
        generators = {}
        for split, clips in clips_by_split.items():
            present = []
            for clip in clips:
                if clip.path is None:
                    self._report.skip(split, clip.id, "missing", clip.expected or None)
                else:
                    present.append(clip)
            if not present:
                # TFDS cannot write an empty split; say so instead of failing in the writer.
                self._report.not_generated(split, f"none of its {len(clips)} clips has an audio file")
                log.warning("%s %s: no audio file found for any of its %d clips; split not generated",
                            self.name, split, len(clips))
                continue
            generators[split] = self._generate(split, present)
        if not generators:
            first = next((c.expected for clips in clips_by_split.values() for c in clips if c.expected), "")
            raise LayoutError(
                f"{self.name}: no audio file of any split found below {manual_dir}"
                + (f" (expected e.g. {first})" if first else "")
            )
        return generators

    def _generate_examples(self, **unused):
        # Required by TFDS; unused because _split_generators returns the generators.
        raise NotImplementedError

    def _generate(self, split: str, clips: list[Clip]) -> Iterator[tuple[str, dict[str, Any]]]:
        # TFDS's bar counts examples but cannot know the total; these lines give rate and ETA.
        start = last_line = time.time()
        clipped, worst = 0, (0.0, "")
        for done, (clip, result) in enumerate(_decode_in_order(clips, self.sample_rate, self.decode_workers)):
            if time.time() - last_line > _PROGRESS_SECONDS:
                last_line = time.time()
                rate = done / (last_line - start)
                log.info("%s %s: %d/%d clips decoded, %.1f clips/s, about %.0f min left", self.name, split,
                         done, len(clips), rate, (len(clips) - done) / max(rate, 1e-9) / 60)
            if isinstance(result, Exception):
                reason = ("missing" if isinstance(result, FileNotFoundError)
                          else "too short" if isinstance(result, TooShortError) else "undecodable")
                self._report.skip(split, clip.id, reason, str(clip.path), str(result))
                log.warning("%s %s: skipping %s: %s", self.name, split, clip.id, result)
                continue
            pcm, peak = result
            if peak is not None:
                clipped += 1
                worst = max(worst, (peak, clip.id))
            self._report.prepared(split)
            yield clip.id, {"id": clip.id, "audio": pcm, **clip.features}
        self._report.note(split, CLIPPED_NOTE, clipped)
        if clipped:
            log.warning("%s %s: %d clips had samples beyond int16 full scale, clipped to it (worst peak "
                        "%.3f, %+.1f dBFS, in %s)", self.name, split, clipped, worst[0],
                        20 * np.log10(worst[0]), worst[1])
        if self._report.count(split) == 0:
            raise audio.AudioDecodeError(
                f"{self.name} {split}: none of the {len(clips)} audio files could be decoded "
                f"(first: {clips[0].path})"
            )

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        # self.data_dir is TFDS's temporary directory here; it is renamed when we return.
        report = self._report.to_json(
            dataset=self.name,
            config=self.builder_config.name,
            version=str(self.version),
            sample_rate=self.sample_rate,
            resampler=audio.RESAMPLER,
            manual_dir=str(dl_manager.manual_dir),
            seconds=round(time.time() - self._started, 1),
        )
        path = Path(self.data_dir) / REPORT_FILENAME
        path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        self._skipped_total = report["skipped_total"]

    def _post_download_and_prepare_hook(self) -> None:
        # Runs once TFDS has moved the data to its final place, so the path printed is real.
        for line in self._report.summary_lines(self.name):
            log.info("%s", line)
        log.info(
            "%s: %d clips skipped in total; listed in %s",
            self.name,
            self._skipped_total,
            Path(self.data_path) / REPORT_FILENAME,
        )


def read_report(builder: tfds.core.DatasetBuilder) -> dict[str, Any] | None:
    """The skip report of a prepared builder, or None if it has none."""
    path = Path(builder.data_dir) / REPORT_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


CLIPPED_NOTE = "clips with samples clipped at int16 full scale"


class TooShortError(audio.AudioDecodeError):
    """A file whose samples resample to none at the model's rate (a few samples long)."""


def refuse_duplicates(name: str, split: str, clips: Sequence[Clip]) -> None:
    """Raises ValueError naming the two rows of the first clip listed twice in a split.

    Refused rather than deduplicated: the releases list each clip once, so a repeated row
    is a damaged or edited file whose two rows may disagree."""
    first: dict[str, Clip] = {}
    for clip in clips:
        seen = first.setdefault(clip.id, clip)
        if seen is clip:
            continue
        a, b = seen.listed_at, clip.listed_at
        if not (a and b):
            raise ValueError(f"{name} {split}: the clip {clip.id!r} is listed twice; remove one of the two rows")
        where = f"{a[0]}: {a[1]} and {b[1]}" if a[0] == b[0] else f"{a[0]} {a[1]} and {b[0]} {b[1]}"
        raise ValueError(f"{where} both list the clip {clip.id!r} ({name} {split}); remove one of the two rows")


def _decode_in_order(
    clips: Sequence[Clip], sample_rate: int, workers: int | None
) -> Iterator[tuple[Clip, tuple[np.ndarray, float | None] | Exception]]:
    """(clip, (int16 audio, peak) or the exception) in input order, decoding ahead on threads;
    peak is the largest absolute float sample where some sample clipped, else None.

    At most 4 * workers clips are in flight, which bounds memory for long releases."""
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(clip: Clip):
        try:
            samples = audio.load(clip.path, sample_rate)
        except (FileNotFoundError, audio.AudioDecodeError) as e:
            return e
        if samples.size == 0:
            return TooShortError(f"audio file {clip.path} holds too few samples to give one at {sample_rate} Hz")
        return audio.to_pcm16(samples), audio.clipped_peak(samples)

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        it = iter(clips)
        for clip in it:
            pending.append((clip, pool.submit(decode, clip)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            clip, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode, nxt)))
            yield clip, future.result()
