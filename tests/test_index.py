"""python -m atjax.index / atjax.audio_index: building, updating and crash-safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import soundfile

from atjax import audio_index as store
from atjax import index as index_lib
from atjax import search as search_lib
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
    (11, 10, 10, [0, 1]),
])
def test_window_starts(n, window, hop, want):
    assert index_lib.window_starts(n, window, hop).tolist() == want


def test_window_starts_cover_every_sample():
    rng = np.random.default_rng(0)
    for _ in range(200):
        window = int(rng.integers(1, 50))
        hop = int(rng.integers(1, window + 1))
        n = int(rng.integers(1, 400))
        starts = index_lib.window_starts(n, window, hop)
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
    assert (again.unchanged, again.added, again.changed) == (7, 0, 0)
    assert [p for p, _ in again.still_failing] == ["corrupt.wav"]

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
    assert report.added + len(report.failed) + report.unchanged == total
    assert report.unchanged == len(done)  # committed files are not embedded again
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
