"""python -m atjax.index / atjax.search.store: building, updating and crash-safety."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import soundfile

from atjax.search import indexer as index_lib
from atjax.search import query as search_lib
from atjax.search import store
from atjax.search import windows
from conftest_search import (BandEnergyEmbedder, CountingModel, search_kit,  # noqa: F401
                             write_collection)

# Opening an existing index embeds one probe window to check the model is the same.
PROBE_WINDOWS = 1


def _build(kit, audio, index_dir, **kw):
    kw.setdefault("progress", False)
    return index_lib.build_index(audio, kit.model, index_dir, **kw)


def _contents(index_dir) -> dict[str, tuple]:
    """path -> (stored vectors, window starts, duration, error) of every file entry."""
    with store.AudioIndex.open(index_dir) as index:
        rows, _ = index.segments()
        out = {}
        for e in index.files():
            sl = slice(e.first_row, (e.first_row or 0) + e.n_rows)
            out[e.path] = (np.asarray(rows.vectors[sl], np.float32),
                           np.asarray(rows.scalars[sl, store.START]), e.duration, e.error)
        return out


def _assert_consistent(index_dir) -> None:
    """Every live file's rows lie inside the committed rows, without overlaps."""
    with store.AudioIndex.open(index_dir) as index:
        rows, row_file = index.segments()
        spans = sorted((e.first_row, e.n_rows) for e in index.files() if e.n_rows)
        for (a, n), (b, _) in zip(spans, spans[1:], strict=False):
            assert a + n <= b, "two files share rows"
        assert all(a + n <= rows.count for a, n in spans)
        assert np.count_nonzero(row_file >= 0) == sum(n for _, n in spans)
        assert rows.codes.shape == (rows.count, index.settings.dim)


@pytest.mark.parametrize("n, window, hop, want", [
    (5, 10, 5, [0]), (10, 10, 5, [0]), (20, 10, 5, [0, 5, 10]), (22, 10, 5, [0, 5, 10, 12]),
    (11, 10, 10, [0, 1]), (1, 1, 1, [0]), (3, 1, 1, [0, 1, 2]), (23, 10, 4, [0, 4, 8, 12, 13]),
    (30, 10, 10, [0, 10, 20]), (31, 10, 7, [0, 7, 14, 21]),
])
def test_window_starts(n, window, hop, want):
    assert windows.window_starts(n, window, hop).tolist() == want


def test_window_starts_cover_every_sample():
    rng = np.random.default_rng(0)
    for _ in range(200):
        window = int(rng.integers(1, 50))
        hop = int(rng.integers(1, window + 1))
        n = int(rng.integers(1, 400))
        starts = windows.window_starts(n, window, hop)
        covered = np.zeros(max(n, window), bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered[:n].all()
        assert np.all(np.diff(starts) <= hop) and np.all(np.diff(starts) > 0)
        assert starts[-1] + window == max(n, window)


def test_index_holds_every_window_embedding(tmp_path, search_kit):
    files = write_collection(tmp_path / "audio", search_kit)
    report = _build(search_kit, tmp_path / "audio", tmp_path / "idx")
    assert (report.added, report.changed, report.removed) == (6, 0, 0)
    assert [p for p, _ in report.failed] == ["corrupt.wav"]
    assert "corrupt.wav" in report.failed[0][1]  # the reason names the file
    assert report.files_in_index == 6
    got = _contents(tmp_path / "idx")
    assert "notes.txt" not in got and got["corrupt.wav"][3] is not None

    # Independent framing: soundfile + slicing by hand, 10 s windows every 5 s.
    sr = search_kit.model.sample_rate
    for name in ("dog", "rain", "long", "engine", "html"):
        rel = files[name].relative_to(tmp_path / "audio").as_posix()
        wave, rate = soundfile.read(files[name], dtype="float32")
        assert rate == sr
        vectors, starts, duration, error = got[rel]
        assert error is None and duration == pytest.approx(len(wave) / sr)
        want_starts = {"rain": [0, 2], "long": [0, 5, 10]}.get(name, [0])
        assert starts.tolist() == want_starts
        frames = np.stack([np.pad(wave[s * sr:s * sr + 10 * sr], (0, max(0, 10 * sr - len(
            wave[s * sr:s * sr + 10 * sr])))) for s in want_starts])
        want = search_kit.model.embed_audio(frames, sr)
        np.testing.assert_allclose(vectors, want, atol=2e-3)  # float16 storage
    car_vectors = got["car.flac"][0]  # 22.05 kHz FLAC, resampled on decoding
    assert np.argmax(car_vectors[0]) == np.argmax(search_kit.model.embed_text(["car"])[0])


def test_int8_codes_bound_the_score_error(tmp_path, search_kit):
    write_collection(tmp_path / "audio", search_kit)
    _build(search_kit, tmp_path / "audio", tmp_path / "idx", dtype="float32")
    with store.AudioIndex.open(tmp_path / "idx") as index:
        rows, _ = index.segments()
        x = np.asarray(rows.vectors, np.float64)
        codes = np.asarray(rows.codes, np.float64)
        scale, bound = rows.scalars[:, store.SCALE], rows.scalars[:, store.BOUND]
    np.testing.assert_allclose(scale, np.abs(x).max(1) / 127, rtol=1e-6)
    q = np.random.default_rng(0).standard_normal((500, x.shape[1]))
    error = np.abs(x @ q.T - scale[:, None] * (codes @ q.T))
    assert np.all(error <= bound[:, None] * np.linalg.norm(q, axis=1)[None])
    assert np.all(bound < 0.02)  # and the bound is tight enough to prune with


def test_update_embeds_only_new_and_changed_files(tmp_path, search_kit):
    files = write_collection(tmp_path / "audio", search_kit)
    audio, idx = tmp_path / "audio", tmp_path / "idx"
    model = CountingModel(search_kit.model)
    index_lib.build_index(audio, model, idx, progress=False)
    with store.AudioIndex.open(idx) as index:
        ids = {e.path: e.id for e in index.files()}

    before = model.windows
    again = index_lib.build_index(audio, model, idx, progress=False)
    assert model.windows - before == PROBE_WINDOWS
    # corrupt.wav failed before: it is tried again (it has no rows, so only decoding).
    assert (again.unchanged, again.added, again.changed) == (6, 0, 0)
    assert [p for p, _ in again.still_failing] == ["corrupt.wav"] and not again.failed

    sr = model.sample_rate
    soundfile.write(files["dog"], search_kit.render("drum", 3.0, sr), sr)   # new content
    st = files["rain"].stat()
    os.utime(files["rain"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched only
    files["engine"].rename(audio / "engine-renamed.wav")                    # moved
    files["car"].unlink()                                                   # deleted
    soundfile.write(files["corrupt"], search_kit.render("drum", 1.0, sr), sr)  # repaired
    before = model.windows
    report = index_lib.build_index(audio, model, idx, progress=False)
    assert (report.changed, report.moved, report.removed, report.added) == (2, 1, 1, 0)
    # dog.wav and corrupt.wav, one window each
    assert model.windows - before == PROBE_WINDOWS + 2

    with store.AudioIndex.open(idx) as index:
        entries = {e.path: e for e in index.files()}
        assert "car.flac" not in entries
        assert entries["engine-renamed.wav"].id == ids["sub/deeper/engine.wav"]
        assert entries["dog.wav"].id == ids["dog.wav"]
        assert entries["corrupt.wav"].error is None
        assert entries["sub/rain.wav"].mtime_ns == st.st_mtime_ns + 10**9
        with search_lib.Searcher(index, model) as searcher:
            hits = searcher.search("drum", k=2)
            assert {h.path for h in hits} == {"dog.wav", "corrupt.wav"}
            assert all(h.score > 0.99 for h in hits)
            assert "car.flac" not in [h.path for h in searcher.search("car", k=10)]
    before = model.windows
    third = index_lib.build_index(audio, model, idx, progress=False)
    assert third.unchanged == 6 and model.windows - before == PROBE_WINDOWS
    _assert_consistent(idx)


def test_refuses_another_model_or_other_settings(tmp_path, search_kit):
    write_collection(tmp_path / "audio", search_kit)
    audio, idx = tmp_path / "audio", tmp_path / "idx"
    _build(search_kit, audio, idx)
    with pytest.raises(store.ModelMismatchError, match="probes differently"):
        index_lib.build_index(audio, search_kit.other_model, idx, progress=False)
    sr = search_kit.model.sample_rate
    with pytest.raises(store.ModelMismatchError, match="makes 7-dim"):
        index_lib.build_index(audio, BandEnergyEmbedder(dim=7, sample_rate=sr), idx,
                              progress=False)
    with pytest.raises(store.ModelMismatchError, match="Hz"):
        index_lib.build_index(audio, BandEnergyEmbedder(sample_rate=sr // 2), idx,
                              progress=False)
    with pytest.raises(store.AudioIndexError, match="window_seconds=10.0"):
        _build(search_kit, audio, idx, window_seconds=5.0)
    (tmp_path / "other").mkdir()
    with pytest.raises(store.AudioIndexError, match="root"):
        _build(search_kit, tmp_path / "other", idx)
    with pytest.raises(store.AudioIndexError, match="not an atjax audio index"):
        store.AudioIndex.open(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        _build(search_kit, tmp_path / "missing", tmp_path / "idx2")


def test_second_writer_is_refused(tmp_path, search_kit):
    write_collection(tmp_path / "audio", search_kit)
    _build(search_kit, tmp_path / "audio", tmp_path / "idx")
    with store.AudioIndex.open(tmp_path / "idx", writable=True):
        with pytest.raises(store.IndexBusyError, match="another process"):
            _build(search_kit, tmp_path / "audio", tmp_path / "idx")


def test_failed_commit_and_torn_append_leave_the_committed_state(tmp_path, search_kit,
                                                                 monkeypatch):
    write_collection(tmp_path / "audio", search_kit)
    audio, idx = tmp_path / "audio", tmp_path / "idx"
    real_upsert = store.AudioIndex._upsert
    calls = []

    def failing_upsert(db, *args):
        calls.append(args)
        if len(calls) == 4:  # the SQLite half of the 4th commit fails
            raise sqlite3.OperationalError("disk I/O error (injected)")
        real_upsert(db, *args)

    monkeypatch.setattr(store.AudioIndex, "_upsert", staticmethod(failing_upsert))
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        _build(search_kit, audio, idx, commit_every=1, batch_size=1)
    monkeypatch.undo()
    _assert_consistent(idx)
    assert len(_contents(idx)) == 3

    # A writer killed mid-append leaves a torn tail past the committed rows.
    with store.AudioIndex.open(idx) as index:
        generation, count = index.state()
        paths = index._array_paths(generation)
    for path in paths.values():
        with open(path, "ab") as f:
            f.write(b"\x7f" * 1001)
    with search_lib.Searcher(idx, search_kit.model) as searcher:  # readers ignore the tail
        assert searcher.num_windows == count
    with store.AudioIndex.open(idx, writable=True) as index:  # a writer cuts it
        sizes = {name: p.stat().st_size for name, p in paths.items()}
        assert sizes["codes"] == count * index.settings.dim

    _build(search_kit, audio, idx)
    _build(search_kit, audio, tmp_path / "clean")
    _assert_same_index(idx, tmp_path / "clean")


def _assert_same_index(a, b) -> None:
    got, want = _contents(a), _contents(b)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_array_equal(got[path][0], want[path][0])
        np.testing.assert_array_equal(got[path][1], want[path][1])
        assert (got[path][3] is None) == (want[path][3] is None)


def test_killed_indexer_resumes_to_a_consistent_index(tmp_path, search_kit):
    audio, idx = tmp_path / "audio", tmp_path / "idx"
    write_collection(audio, search_kit)
    sr = search_kit.model.sample_rate
    for i, word in enumerate(["drum", "bell", "dog", "rain", "car", "siren"]):
        soundfile.write(audio / f"extra{i}.wav", search_kit.render(word, 2.0 + i, sr), sr)
    total = 13  # audio files, the corrupt one included
    proc = subprocess.Popen(search_kit.index_command(audio, idx, "--delay", "0.4"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        committed = 0
        deadline = time.monotonic() + 120
        while committed < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "indexer made no progress"
            time.sleep(0.05)
            if (idx / store.DB_NAME).exists():
                try:
                    with sqlite3.connect(f"file:{idx / store.DB_NAME}?mode=ro", uri=True) as db:
                        committed = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
                except sqlite3.OperationalError:  # the schema is not there yet
                    pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    _assert_consistent(idx)
    done = _contents(idx)
    assert 3 <= len(done) < total
    windows_done = sum(len(v[1]) for v in done.values())
    model = CountingModel(search_kit.model)
    report = index_lib.build_index(audio, model, idx, progress=False)
    failed_before = [path for path, v in done.items() if v[3] is not None]
    assert (report.added + len(report.failed) + len(report.still_failing) + report.unchanged
            == total)
    # Committed files are not embedded again; committed failures are tried again.
    assert report.unchanged == len(done) - len(failed_before)
    assert [path for path, _ in report.still_failing] == failed_before
    clean = index_lib.build_index(audio, search_kit.model, tmp_path / "clean",
                                  progress=False)
    assert model.windows - PROBE_WINDOWS == clean.windows - windows_done
    _assert_consistent(idx)
    _assert_same_index(idx, tmp_path / "clean")
    with search_lib.Searcher(idx, model) as a, search_lib.Searcher(tmp_path / "clean",
                                                                    model) as b:
        for word in ("drum", "siren", "rain"):
            assert [(h.path, h.time) for h in a.search(word, 5)] == \
                   [(h.path, h.time) for h in b.search(word, 5)]


def test_compaction_drops_dead_rows(tmp_path, search_kit):
    files = write_collection(tmp_path / "audio", search_kit)
    audio, idx = tmp_path / "audio", tmp_path / "idx"
    _build(search_kit, audio, idx)
    with store.AudioIndex.open(idx) as index:
        long_id = next(e.id for e in index.files() if e.path == "long.wav")
    for name in ("rain", "dog", "car", "engine"):
        files[name].unlink()
    report = _build(search_kit, audio, idx)
    assert report.removed == 4 and report.compacted_rows == 5  # rain 2, dog/car/engine 1
    with store.AudioIndex.open(idx) as index:
        generation, count = index.state()
        assert (generation, count, index.dead_rows()) == (1, 4, 0)
        assert sorted(p.name.split("-")[0] for p in idx.iterdir()
                      if p.name[0] in "vcs") == ["codes", "scalars", "vectors"]
        with search_lib.Searcher(index, search_kit.model) as searcher:
            hit = searcher.search("siren", 1)[0]
            assert (hit.file_id, hit.path, hit.time) == (long_id, "long.wav", 10.0)
    _assert_consistent(idx)


def test_empty_folder_gives_an_empty_index(tmp_path, search_kit):
    (tmp_path / "audio").mkdir()
    report = _build(search_kit, tmp_path / "audio", tmp_path / "idx")
    assert report.files_in_index == 0
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        assert searcher.search("dog") == []


def test_index_cli(tmp_path, search_kit, monkeypatch, capsys):
    import atjax

    write_collection(tmp_path / "audio", search_kit)
    bundle = tmp_path / "bundle"
    loaded = []
    monkeypatch.setattr(atjax, "load", lambda path: loaded.append(str(path)) or search_kit.model)
    idx = str(tmp_path / "idx")
    assert index_lib.main([str(tmp_path / "audio"), "--out", idx, "--model", str(bundle),
                           "--no-progress", "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert "6 new" in out and "corrupt.wav: cannot decode" in out
    with store.AudioIndex.open(idx) as index:
        assert index.model_record["bundle"] == str(bundle)
        assert index.settings.window_seconds == 4.0 and index.settings.hop_seconds == 2.0
    # An update needs no --model: the index names its bundle.
    assert index_lib.main([str(tmp_path / "audio"), "--out", idx, "--no-progress"]) == 0
    assert loaded == [str(bundle)] * 2
    assert "still cannot be decoded" in capsys.readouterr().out
    assert index_lib.main([str(tmp_path / "nowhere"), "--out", idx]) == 1
    assert "audio folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_lib.main([str(tmp_path / "audio"), "--out", str(tmp_path / "new")])
    assert "--model is required" in capsys.readouterr().err


# -- long files: decoded in blocks, windows cut as they decode --------------------------------

def test_windower_cuts_blocks_like_the_whole_signal():
    rng = np.random.default_rng(1)
    for _ in range(300):
        length = int(rng.integers(1, 40))
        hop = int(rng.integers(1, length + 1))
        n = int(rng.integers(1, 300))
        wave = rng.standard_normal(n).astype(np.float32)
        cuts = np.sort(rng.choice(np.arange(1, n), min(n - 1, int(rng.integers(0, 12))),
                                  replace=False)) if n > 1 else []
        blocks = [np.zeros(0, np.float32), *np.split(wave, cuts)]  # an empty block too
        windower = windows.Windower(length, hop)
        got = list(windower.frames(blocks))
        want = _starts_by_hand(n, length, hop)
        assert [s for s, _ in got] == want and windower.samples == n
        for (_, frame), s in zip(got, want, strict=True):
            np.testing.assert_array_equal(frame, _frame_by_hand(wave, s, length))
    assert list(windows.Windower(5, 2).frames([])) == []


def _starts_by_hand(n: int, length: int, hop: int) -> list[int]:
    """Window starts written out as the module doc says, with a plain loop: every hop while
    a whole window fits, then one window ending at the very end if the last stops short; a
    signal of at most one window is the single window at 0."""
    starts = [0]
    while starts[-1] + hop + length <= n:
        starts.append(starts[-1] + hop)
    if starts[-1] + length < n:
        starts.append(n - length)
    return starts


def _frame_by_hand(wave: np.ndarray, start: int, length: int) -> np.ndarray:
    """wave[start:start + length], zero-padded at the end to `length` samples."""
    frame = np.zeros(length, np.float32)
    piece = wave[start:start + length]
    frame[:len(piece)] = piece
    return frame


def _write_long(kit, path, seconds, rate=44100):
    """A stereo file whose halves differ, so that its windows differ."""
    half = seconds / 2
    left = np.concatenate([kit.render("bird", half, rate), kit.render("siren", half, rate)])
    right = np.concatenate([kit.render("rain", half, rate), kit.render("bell", half, rate)])
    soundfile.write(path, np.stack([left, right], 1), rate)


_REAL_READ = soundfile.SoundFile.read


@pytest.fixture
def little_memory(monkeypatch):
    """A machine that cannot hold a whole file decoded: a read of more than 2**17 frames
    (or of the whole file) at once raises MemoryError, as numpy does when it cannot
    allocate. soundfile.read reads through SoundFile.read, so every decode path meets it."""
    limit = 1 << 17
    real_read = soundfile.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        if frames < 0 or frames > limit:
            raise MemoryError(f"Unable to allocate {frames} frames (test limit {limit})")
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", read)
    return limit


def _whole_file_embeddings(model, path, window_s, hop_s):
    """Independent reference: the whole file decoded at once, framed by a plain loop (not
    the module's framing), embedded."""
    from data_pipeline import audio

    sr = model.sample_rate
    wave = audio.load(path, sr)
    length = int(window_s * sr)
    starts = _starts_by_hand(len(wave), length, int(hop_s * sr))
    frames = np.stack([_frame_by_hand(wave, s, length) for s in starts])
    return model.embed_audio(frames, sr), np.asarray(starts) / sr, len(wave) / sr


def test_long_file_is_decoded_in_blocks_with_the_whole_file_windows(tmp_path, search_kit,
                                                                    little_memory):
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)
    _write_long(search_kit, audio_dir / "field.wav", 70.0)  # 3.1 M frames: too many at once
    report = _build(search_kit, audio_dir, tmp_path / "idx", dtype="float32",
                    window_seconds=10.0, hop_seconds=5.0, batch_size=3)
    assert [p for p, _ in report.failed] == ["corrupt.wav"] and report.added == 7
    got = _contents(tmp_path / "idx")
    for rel in ("field.wav", "long.wav", "car.flac", "sub/rain.wav"):
        path = audio_dir / rel
        with pytest.MonkeyPatch.context() as unlimited:
            unlimited.setattr(soundfile.SoundFile, "read", _REAL_READ)
            want, starts, duration = _whole_file_embeddings(search_kit.model, path, 10, 5)
        vectors, got_starts, got_duration, error = got[rel]
        assert error is None and got_duration == pytest.approx(duration)
        np.testing.assert_array_equal(got_starts, starts.astype(np.float32))
        np.testing.assert_allclose(vectors, want, atol=1e-6)  # float32 storage
    # The starts (s) of 10 s windows every 5 s, written out: a 70 s file, a 20 s one, a
    # 12 s one (its last window ends at the end) and a 4 s one (one padded window).
    assert got["field.wav"][1].tolist() == list(range(0, 61, 5))
    assert got["long.wav"][1].tolist() == [0, 5, 10]
    assert got["sub/rain.wav"][1].tolist() == [0, 2]
    assert got["car.flac"][1].tolist() == [0]


def test_query_file_is_decoded_in_blocks(tmp_path, search_kit, little_memory):
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)
    _build(search_kit, audio_dir, tmp_path / "idx", window_seconds=10.0, hop_seconds=5.0)
    example = tmp_path / "example.wav"
    _write_long(search_kit, example, 70.0)
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        hits = searcher.search_file(example, k=3)
        with pytest.MonkeyPatch.context() as unlimited:
            unlimited.setattr(soundfile.SoundFile, "read", _REAL_READ)
            want, _, _ = _whole_file_embeddings(search_kit.model, example, 10, 5)
        q = want.mean(0)
        expected = searcher.search_embedding(q / np.linalg.norm(q), k=3)
    assert [(h.path, h.time) for h in hits] == [(h.path, h.time) for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected],
                               atol=1e-5)


def test_out_of_memory_decoding_a_file_skips_only_that_file(tmp_path, search_kit,
                                                            monkeypatch):
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)

    def read(self, *args, **kwargs):
        if self.name.endswith("long.wav"):
            raise MemoryError()  # numpy's MemoryError for a huge array may have no message
        return _REAL_READ(self, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", read)
    report = _build(search_kit, audio_dir, tmp_path / "idx", commit_every=1)
    failed = dict(report.failed)
    assert sorted(failed) == ["corrupt.wav", "long.wav"] and report.added == 5
    assert "MemoryError" in failed["long.wav"]
    assert _contents(tmp_path / "idx")["long.wav"][3] == failed["long.wav"]
    monkeypatch.undo()
    again = _build(search_kit, audio_dir, tmp_path / "idx")  # the next run tries it again
    assert again.changed == 1 and [p for p, _ in again.still_failing] == ["corrupt.wav"]
    assert _contents(tmp_path / "idx")["long.wav"][3] is None
    _assert_consistent(tmp_path / "idx")


def _sparse_au(path, seconds, rate=48000, channels=2):
    """A 16-bit PCM .au file of silence that takes no disk space (a sparse file)."""
    import struct

    data = int(seconds * rate) * channels * 2
    with open(path, "wb") as f:
        f.write(b".snd" + struct.pack(">IIIII", 24, 0xFFFFFFFF, 3, rate, channels))
        f.truncate(24 + data)
    return data


def _peak_memory(fn) -> int:
    """Peak bytes that Python and numpy allocated while fn() ran."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_indexing_and_querying_memory_does_not_grow_with_duration(tmp_path, search_kit):
    peaks = {}
    for minutes in (0.5, 4, 20):  # the first run imports the decoders: not compared
        audio_dir, idx = tmp_path / f"audio{minutes}", tmp_path / f"idx{minutes}"
        audio_dir.mkdir()
        _sparse_au(audio_dir / "recording.au", minutes * 60)
        index_peak = _peak_memory(functools.partial(
            _build, search_kit, audio_dir, idx, window_seconds=10.0, hop_seconds=5.0,
            batch_size=2))
        with search_lib.Searcher(idx, search_kit.model) as searcher:
            assert searcher.num_windows == int(minutes * 60 - 10) // 5 + 1
            peaks[minutes] = index_peak, _peak_memory(functools.partial(
                searcher.search_file, audio_dir / "recording.au", k=1))
    # 20 minutes at 48 kHz stereo is 460 MB of float32 decoded whole (plus its mono mix
    # and the resampled copy). In blocks, the peak is the model's batch, the blocks decoded
    # ahead of it (up to PREFETCH_SAMPLES, 16 MB) and small change, whatever the duration.
    whole = 20 * 60 * 48000 * 2 * 4
    (index_4, query_4), (index_20, query_20) = peaks[4], peaks[20]
    assert index_20 < index_4 + 4e6 and index_20 < whole / 5, peaks
    assert query_20 < query_4 + 4e6 and query_20 < whole / 5, peaks


# -- the index folder: never shared with other files ---------------------------------------

def test_a_new_index_needs_a_new_or_empty_folder(tmp_path, search_kit):
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)
    # A folder of the user's whose names look like the index's own files.
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("ann-20230115 birthday.wav", "codes-123456.i8", "draft mix.tmp", "notes"):
        (mine / name).write_text("user data")
    before = sorted(p.name for p in mine.iterdir())
    with pytest.raises(store.AudioIndexError, match="not empty .* holds no index"):
        _build(search_kit, audio_dir, mine)
    assert sorted(p.name for p in mine.iterdir()) == before
    with pytest.raises(store.AudioIndexError, match="is the audio folder"):
        _build(search_kit, audio_dir, audio_dir)
    with pytest.raises(store.AudioIndexError, match="is a file"):
        _build(search_kit, audio_dir, mine / "notes")
    # An empty folder is fine, and so is one an interrupted create left behind.
    (tmp_path / "empty").mkdir()
    assert _build(search_kit, audio_dir, tmp_path / "empty").added == 6
    (tmp_path / "crashed").mkdir()
    for name in (store.LOCK_NAME, store.DB_NAME + ".tmp", store.DB_NAME + ".tmp-journal"):
        (tmp_path / "crashed" / name).write_bytes(b"x")
    assert _build(search_kit, audio_dir, tmp_path / "crashed").added == 6
    assert not (tmp_path / "crashed" / (store.DB_NAME + ".tmp-journal")).exists()


def test_an_index_inside_the_collection_is_not_indexed(tmp_path, search_kit):
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)
    _build(search_kit, audio_dir, audio_dir / "the index")
    sr = search_kit.model.sample_rate
    soundfile.write(audio_dir / "the index" / "stray.wav", search_kit.render("dog", 1, sr), sr)
    report = _build(search_kit, audio_dir, audio_dir / "the index")
    assert report.added == 0 and "the index/stray.wav" not in _contents(audio_dir / "the index")


def test_writer_clean_up_deletes_only_the_names_it_generates(tmp_path, search_kit):
    audio_dir, idx = tmp_path / "audio", tmp_path / "idx"
    write_collection(audio_dir, search_kit)
    _build(search_kit, audio_dir, idx)
    users = ["ann-20230115 birthday.wav", "codes-123456 morse.wav", "draft mix.tmp",
             "vectors-000000.f16.bak", "scalars-000001.f32.old", "ann-000000.faiss.v2"]
    stale = ["vectors-000003.f16", "codes-000003.i8", "scalars-000003.f32", "vectors-000000.f32",
             "ann-000002.faiss", "ann-000000.faiss.1234.tmp", store.DB_NAME + ".tmp"]
    for name in users + stale:
        (idx / name).write_text("x")
    (idx / "ann-000000.faiss").write_text("the current generation's: kept")
    with store.AudioIndex.open(idx, writable=True):
        pass
    left = {p.name for p in idx.iterdir()}
    assert set(users) <= left and not set(stale) & left and "ann-000000.faiss" in left


# -- which files are indexed ---------------------------------------------------------------

def test_which_files_are_indexed(tmp_path, search_kit):
    audio, outside = tmp_path / "audio", tmp_path / "outside"
    (audio / "sub").mkdir(parents=True)
    (audio / ".hidden folder").mkdir()
    outside.mkdir()
    sr = search_kit.model.sample_rate
    for path in (audio / "dog.wav", audio / "LOUD.WAV", audio / "sub" / "in sub.flac",
                 audio / ".hidden.wav", audio / ".hidden folder" / "x.wav",
                 outside / "elsewhere.wav"):
        soundfile.write(path, search_kit.render("dog", 1.0, sr), sr)
    (audio / "notes.txt").write_text("not audio")
    os.symlink("dog.wav", audio / "link inside.wav")
    os.symlink("sub/in sub.flac", audio / "link into sub.flac")
    os.symlink(outside / "elsewhere.wav", audio / "link outside.wav")
    os.symlink("../outside/elsewhere.wav", audio / "relative outside.wav")
    os.symlink("../audio/dog.wav", audio / "out and back.wav")  # leaves, but ends inside
    os.symlink("missing.wav", audio / "dangling.wav")
    os.symlink(outside, audio / "folder outside")
    os.symlink("sub", audio / "folder inside")
    os.symlink(".", audio / "sub" / "loop")  # would walk forever if followed
    # A name that is not UTF-8 (bytes any Linux file system takes).
    with open(os.path.join(os.fsencode(audio), b"caf\xe9.wav"), "wb") as f:
        f.write((audio / "dog.wav").read_bytes())

    report = _build(search_kit, audio, tmp_path / "idx", commit_every=1)
    assert sorted(_contents(tmp_path / "idx")) == [
        "LOUD.WAV", "dog.wav", "link inside.wav", "link into sub.flac", "out and back.wav",
        "sub/in sub.flac"]
    skipped = dict(report.failed)
    assert sorted(skipped) == ["'caf\\udce9.wav'", "dangling.wav", "link outside.wav",
                               "relative outside.wav"]
    assert "not valid UTF-8" in skipped["'caf\\udce9.wav'"]
    assert "cannot stat" in skipped["dangling.wav"]
    for name in ("link outside.wav", "relative outside.wav"):
        assert skipped[name] == "a symbolic link to a file outside the audio folder"
    # The next run skips them again, and a file that became such a link leaves the index
    # (with the links inside that now lead out through it).
    (audio / "dog.wav").rename(outside / "dog.wav")
    os.symlink(outside / "dog.wav", audio / "dog.wav")
    again = _build(search_kit, audio, tmp_path / "idx")
    now_outside = ["dog.wav", "link inside.wav", "out and back.wav"]
    assert sorted(set(dict(again.failed)) - set(skipped)) == now_outside
    assert again.removed == 3 and again.added == 0
    assert sorted(_contents(tmp_path / "idx")) == ["LOUD.WAV", "link into sub.flac",
                                                   "sub/in sub.flac"]
    _assert_consistent(tmp_path / "idx")


# -- files that failed --------------------------------------------------------------------

def test_a_failed_file_is_tried_again_on_the_next_run(tmp_path, search_kit):
    # The cause of a failure can lie outside the file (a read error, a missing decoder,
    # too little memory) and go away while its size and mtime stay the same. Simulated
    # here by content that changes behind an unchanged size and mtime.
    audio_dir = tmp_path / "audio"
    write_collection(audio_dir, search_kit)
    dog = audio_dir / "dog.wav"
    good = dog.read_bytes()
    stat = dog.stat()
    dog.write_bytes(b"\0" * len(good))
    os.utime(dog, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    first = _build(search_kit, audio_dir, tmp_path / "idx")
    assert sorted(p for p, _ in first.failed) == ["corrupt.wav", "dog.wav"]
    dog.write_bytes(good)
    os.utime(dog, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    model = CountingModel(search_kit.model)
    second = index_lib.build_index(audio_dir, model, tmp_path / "idx", progress=False)
    assert second.changed == 1 and not second.failed
    assert [p for p, _ in second.still_failing] == ["corrupt.wav"]
    assert "2 undecodable" not in second.summary() and "1 undecodable" in second.summary()
    assert model.windows == PROBE_WINDOWS + 1  # dog.wav's one window
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        assert searcher.search("dog", 1)[0].path == "dog.wav"


# -- the command line -----------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path, search_kit, monkeypatch):
    """(audio folder, run(argv) -> (exit code, stdout, stderr)) with atjax.load stubbed."""
    import atjax

    write_collection(tmp_path / "audio", search_kit)
    monkeypatch.setattr(atjax, "load", lambda path: search_kit.model)

    def run(argv, main=index_lib.main):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()

    return tmp_path / "audio", run


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--commit-every", "0"], "--commit-every: must be at least 1"),
    (["--batch-size", "1.5"], "--batch-size: expected a whole number"),
    (["--window", "0"], "--window: must be a positive number of seconds"),
    (["--hop", "0"], "--hop: must be a positive number of seconds"),
    (["--window", "-2"], "--window: must be a positive"),
    (["--window", "nan"], "--window: must be a positive"),
    (["--hop", "inf"], "--hop: must be a positive"),
])
def test_index_cli_refuses_bad_arguments(cli, tmp_path, args, message):
    audio_dir, run = cli
    code, _, err = run([audio_dir, "--out", tmp_path / "idx", "--model", "b", "--no-progress",
                        *args])
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()


def test_index_cli_reports_errors_without_a_traceback(cli, tmp_path, monkeypatch):
    import sys

    audio_dir, run = cli
    base = [audio_dir, "--model", "b", "--no-progress"]
    # A window shorter than one sample of the model: refused before anything is created.
    code, _, err = run([*base, "--out", tmp_path / "idx", "--window", "0.00001"])
    assert code == 1 and "less than one sample at the model's 16000 Hz" in err
    assert not (tmp_path / "idx").exists()
    (tmp_path / "a file").write_text("x")
    code, _, err = run([*base, "--out", tmp_path / "a file"])
    assert code == 2 and "is a file" in err
    code, _, err = run([*base, "--out", tmp_path / "audio" / "sub"])
    assert code == 1 and "not empty" in err
    # An empty collection with --approximate: an empty index, and a note.
    pytest.importorskip("faiss")
    (tmp_path / "nothing").mkdir()
    code, out, err = run([tmp_path / "nothing", "--out", tmp_path / "empty", "--model", "b",
                          "--no-progress", "--approximate"])
    assert code == 0 and "no approximate index was built" in out
    # Without faiss, --approximate stops before any work.
    monkeypatch.setitem(sys.modules, "faiss", None)
    code, _, err = run([*base, "--out", tmp_path / "idx", "--approximate"])
    assert code == 1 and "pip install faiss-cpu" in err and not (tmp_path / "idx").exists()


def test_index_cli_without_the_data_extra(cli, tmp_path, monkeypatch):
    import sys

    import data_pipeline

    audio_dir, run = cli
    # As on a base install: soundfile and soxr cannot be imported (nor what needs them).
    for name in ("soundfile", "soxr", "data_pipeline.audio"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delattr(data_pipeline, "audio", raising=False)
    code, _, err = run([audio_dir, "--out", tmp_path / "idx", "--model", "b", "--no-progress"])
    assert code == 1 and 'pip install "atjax[data]"' in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()


# -- readers never write --------------------------------------------------------------------

def test_readers_open_the_index_read_only(tmp_path, search_kit):
    # Whatever the file permissions say (the tests may run as root, for whom a chmod stops
    # nothing), a reader's connection itself must refuse to write.
    write_collection(tmp_path / "audio", search_kit)
    _build(search_kit, tmp_path / "audio", tmp_path / "idx")
    db_file = tmp_path / "idx" / store.DB_NAME
    before = db_file.read_bytes()
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        assert searcher.search("dog", 1)[0].path == "dog.wav"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            searcher.index._db.execute("UPDATE meta SET value = '0' WHERE key = 'generation'")
    assert db_file.read_bytes() == before


@pytest.fixture
def read_only_folder():
    """make(path): makes a folder really read-only for this process, undone afterwards.

    chmod does not stop root (tests may run as root); root is stopped by the immutable
    attribute (chattr +i), where the file system and the process's capabilities allow it.
    """
    import shutil
    import stat as stat_lib

    undo = []

    def make(path):
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(stat_lib.S_IRUSR | stat_lib.S_IXUSR)
            undo.append(lambda: path.chmod(mode))
        elif shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root where chattr +i is unavailable: cannot make a "
                        "folder read-only")
        else:
            undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
        probe = path / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")

    yield make
    for fn in undo:
        fn()


def test_search_and_serve_work_on_a_read_only_index(tmp_path, search_kit, monkeypatch,
                                                    read_only_folder, capsys):
    import atjax
    from atjax.search import server as serve

    write_collection(tmp_path / "audio", search_kit)
    _build(search_kit, tmp_path / "audio", tmp_path / "idx", bundle=str(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "idx").iterdir() if "sqlite-" in p.name) == []
    read_only_folder(tmp_path / "idx")
    monkeypatch.setattr(atjax, "load", lambda path: search_kit.model)
    assert search_lib.main([str(tmp_path / "idx"), "a dog", "-k", "1"]) == 0
    assert "dog.wav" in capsys.readouterr().out
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        server = serve.make_server(searcher, port=0)
        server.server_close()
        assert searcher.counts() == (6, 9)
    # The writer cannot work there: an error, not a traceback.
    assert index_lib.main([str(tmp_path / "audio"), "--out", str(tmp_path / "idx"),
                           "--no-progress"]) == 1
    err = capsys.readouterr().err  # after the INFO line that the index opens read-only
    assert err.splitlines()[-1].startswith(
        f"error: {tmp_path / 'idx'}: cannot open the index for writing")
    assert "Traceback" not in err


class _AudioOnly:
    """The tiny model's Embedder for the audio tower; fixed text embeddings (no tokenizer)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.sample_rate = embedder.sample_rate
        self.embed_audio = embedder.embed_audio

    def embed_text(self, texts):
        out = np.zeros((len(texts), self.embedder.embed_dim), np.float32)
        out[:, 0] = 1.0
        return out


def test_a_clip_under_the_network_minimum_embeds_alike_directly_and_in_an_index(tmp_path):
    """embed_audio pads a clip shorter than the network's minimum with silence to it, as
    the indexer pads a file shorter than its window: both give one embedding."""
    import pathlib

    from atjax import config as config_lib
    from atjax import inference
    from atjax import model as model_lib
    from atjax import train_step as step_lib

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny,head=mlp", [])
    _, eval_def, params, batch_stats, rest = step_lib.split_model(
        model_lib.build(config.model, seed=0))
    embedder = inference.Embedder(config, eval_def, params, batch_stats, rest,
                                  tokenizer=None, batch_size=1)
    rate = embedder.sample_rate
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.3 * rate)) / rate)
            ).astype(np.float32)
    assert clip.size < embedder.min_samples  # 0.3 s < 0.31 s for the tiny config
    direct = embedder.embed_audio([clip], rate)[0]
    padded = np.pad(clip, (0, embedder.min_samples - clip.size))
    np.testing.assert_array_equal(direct, embedder.embed_audio([padded], rate)[0])

    # A window of the network's minimum: the indexer pads the file to it.
    window_seconds = embedder.min_samples / rate
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "short.wav", clip, rate, subtype="FLOAT")
    index_lib.build_index(tmp_path / "audio", _AudioOnly(embedder), tmp_path / "idx",
                          window_seconds=window_seconds, dtype="float32", progress=False)
    stored = _contents(tmp_path / "idx")["short.wav"][0]
    assert stored.shape == (1, embedder.embed_dim)
    np.testing.assert_allclose(stored[0], direct, atol=1e-6)
