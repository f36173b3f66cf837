"""python -m atjax.search / atjax.search.query: ranking, timing of hits, exactness, scale paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from atjax.bench import search as bench
from atjax.search import approximate as approximate_lib
from atjax.search import codes as codes_lib
from atjax.search import exact as exact_lib
from atjax.search import indexer as index_lib
from atjax.search import query as search_lib
from atjax.search import store
from conftest_search import search_kit, write_collection  # noqa: F401


@pytest.fixture
def collection(tmp_path, search_kit):
    files = write_collection(tmp_path / "audio", search_kit)
    # The collection is designed for 10 s windows every 5 s (see write_collection).
    index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                          window_seconds=10.0, hop_seconds=5.0, progress=False)
    return files, tmp_path / "idx"


def _reference_ranking(files, root, model, query_vector):
    """Independent ranking: frame each file by hand, embed, take the best window."""
    sr = model.sample_rate
    scores = {}
    for name, path in files.items():
        if name == "corrupt":
            continue
        wave, rate = soundfile.read(path, dtype="float32")
        if rate != sr:
            from scipy import signal
            wave = signal.resample_poly(wave, sr, rate).astype(np.float32)
        w, h = 10 * sr, 5 * sr
        starts = list(range(0, max(1, len(wave) - w + 1), h))
        if len(wave) > w and starts[-1] + w < len(wave):
            starts.append(len(wave) - w)
        frames = np.stack([np.pad(wave[s:s + w], (0, w - len(wave[s:s + w])))
                           for s in starts])
        window_scores = model.embed_audio(frames, sr) @ query_vector
        best = int(np.argmax(window_scores))
        scores[path.relative_to(root).as_posix()] = (float(window_scores[best]),
                                                     starts[best] / sr)
    return sorted(scores.items(), key=lambda kv: -kv[1][0])


@pytest.mark.parametrize("query", ["siren", "a dog barks", "rain then a bell rings",
                                   "an engine", "car"])
def test_text_search_matches_an_independent_ranking(collection, search_kit, tmp_path, query):
    files, idx = collection
    model = search_kit.model
    with search_lib.Searcher(idx, model) as searcher:
        hits = searcher.search(query, k=10)
    want = _reference_ranking(files, tmp_path / "audio", model, model.embed_text([query])[0])
    assert len(hits) == len(want) == 6
    for hit, (_, (score, _)) in zip(hits, want, strict=True):
        assert hit.score == pytest.approx(score, abs=3e-3)  # float16 storage
    # Same order wherever the reference scores are not near-ties.
    confident = [p for i, (p, (s, _)) in enumerate(want)
                 if all(abs(s - t) > 1e-2 for j, (_, (t, _)) in enumerate(want) if j != i)]
    assert [h.path for h in hits if h.path in confident] == confident
    assert hits[0].path == want[0][0] and hits[0].time == want[0][1][1]


def test_a_hit_points_at_the_moment_it_happens(collection, search_kit):
    _, idx = collection
    with search_lib.Searcher(idx, search_kit.model) as searcher:
        siren = searcher.search("siren", k=1)[0]
        bird = searcher.search("bird", k=1)[0]
    # long.wav: bird for 10 s, then siren for 10 s.
    assert (siren.path, siren.time, siren.end) == ("long.wav", 10.0, 20.0)
    assert (bird.path, bird.time, bird.end) == ("long.wav", 0.0, 10.0)
    assert siren.score > 0.99 and bird.score > 0.99


def test_query_by_example(collection, search_kit, tmp_path):
    _, idx = collection
    example = tmp_path / "example.wav"
    soundfile.write(example, search_kit.render("rain", 7.0, 22050), 22050)
    with search_lib.Searcher(idx, search_kit.model) as searcher:
        assert searcher.search_file(example, k=1)[0].path == "sub/rain.wav"
        wave = search_kit.render("engine", 3.0, 8000)
        hit = searcher.search_audio(wave, 8000, k=1)[0]
        assert hit.path == "sub/deeper/engine.wav"
        with pytest.raises(ValueError, match="non-empty mono"):
            searcher.search_audio(np.zeros((2, 10)), 8000)
        with pytest.raises(ValueError, match="empty query"):
            searcher.search("   ")
        with pytest.raises(ValueError, match="k must be a positive integer"):
            searcher.search("dog", k=0)


def test_searcher_follows_index_updates(collection, search_kit, tmp_path):
    files, idx = collection
    model = search_kit.model
    with search_lib.Searcher(idx, model) as searcher:
        assert searcher.search("dog", 1)[0].path == "dog.wav"
        files["dog"].unlink()
        soundfile.write(tmp_path / "audio" / "drums.wav", search_kit.render("drum", 2.0, 16000),
                        16000)
        index_lib.build_index(tmp_path / "audio", model, idx, progress=False)
        assert "dog.wav" not in [h.path for h in searcher.search("dog", 10)]
        assert searcher.search("drum", 1)[0].path == "drums.wav"


def test_refuses_a_query_model_that_did_not_build_the_index(collection, search_kit):
    _, idx = collection
    with search_lib.Searcher(idx, search_kit.other_model) as searcher:
        with pytest.raises(store.ModelMismatchError):
            searcher.search("dog")


def _random_index(path, dtype="float16", windows=3000, dim=48, seed=0):
    bench.write_index(path, windows=windows, dim=dim, dtype=dtype, windows_per_file=5,
                      seed=seed, log=lambda _: None)
    return bench.Generator(dim, clusters=16, seed=seed).queries(40)


def _brute_force(path, q, k):
    """Reference: every stored vector in float64, best window per file."""
    with store.AudioIndex.open(path) as index:
        rows, row_file = index.segments()
        scores = np.asarray(rows.vectors, np.float64) @ q.astype(np.float64)
    best = {}
    for row, (f, s) in enumerate(zip(row_file, scores, strict=True)):
        if f >= 0 and (f not in best or s > best[f][0]):
            best[f] = (s, row)
    return sorted(((s, f) for f, (s, _) in best.items()), reverse=True)[:k]


@pytest.mark.parametrize("scan", ["numpy", "numba"])
def test_exact_search_equals_brute_force(tmp_path, monkeypatch, scan):
    if scan == "numba":
        pytest.importorskip("numba")
        monkeypatch.setattr(codes_lib, "_NUMBA_MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(codes_lib, "_numba_kernel", lambda: None)
    queries = _random_index(tmp_path / "idx")
    with store.AudioIndex.open(tmp_path / "idx") as index:
        rows, _ = index.segments()
        stored = np.asarray(rows.vectors[:20], np.float32)
    # Adversarial queries too: stored rows (a perfect match, ties with itself), their
    # negations, and an unnormalised vector.
    queries = np.concatenate([queries, stored, -stored[:5], 7.5 * queries[:3]])
    rescored = []
    with search_lib.Searcher(tmp_path / "idx") as searcher:
        for q in queries:
            stats = {}
            hits = searcher.search_embedding(q, k=10, stats=stats)
            rescored.append(stats["candidates"])
            want = _brute_force(tmp_path / "idx", q, 10)
            np.testing.assert_allclose([h.score for h in hits], [s for s, _ in want],
                                       rtol=1e-5, atol=1e-5)
            kth = want[-1][0]
            assert {f for s, f in want if s > kth + 1e-5} <= {h.file_id for h in hits}
    assert np.mean(rescored) < 0.1 * 3000  # the int8 bound prunes most rows


def test_exact_search_with_deleted_rows_and_k_beyond_the_files(tmp_path):
    _random_index(tmp_path / "idx", windows=500, dim=16)
    with store.AudioIndex.open(tmp_path / "idx", writable=True) as index:
        entries = index.files()
        changes = store.ChangeSet()
        for e in entries[::2]:
            changes.remove(e.path)
        index.commit(changes)
        live = {e.id for e in entries[1::2]}
    q = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    with search_lib.Searcher(tmp_path / "idx") as searcher:
        hits = searcher.search_embedding(q, k=1000)
    assert {h.file_id for h in hits} == live
    want = _brute_force(tmp_path / "idx", q, 1000)
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in want], atol=1e-5)


def test_approximate_search(tmp_path):
    faiss = pytest.importorskip("faiss")
    queries = _random_index(tmp_path / "idx", windows=4000, dim=32)
    with search_lib.Searcher(tmp_path / "idx", approximate=True, nprobe=8) as searcher:
        ann = searcher._ann
        assert (tmp_path / "idx" / "ann-000000.faiss").exists()
        assert ann.ann.ntotal == 4000 and isinstance(ann.ann, faiss.IndexIVF)
        snap = searcher._snap
        recall, full = [], []
        for q in queries:
            exact = exact_lib.exact_top_files(snap, q, 10)
            approx = searcher.search_embedding(q, 10)
            recall.append(len({f for f, _, _ in exact} & {h.file_id for h in approx}) / 10)
            # Visiting every cell scores every row: the exact answer.
            everything = approximate_lib.approximate_top_files(snap, ann, q, 10, ann.ann.nlist)
            full.append([f for f, _, _ in everything] == [f for f, _, _ in exact])
        assert np.mean(recall) >= 0.9 and all(full)

    # Rows appended later are added to the saved IVF index, not retrained.
    with store.AudioIndex.open(tmp_path / "idx", writable=True) as index:
        changes = store.ChangeSet()
        extra = bench.Generator(32, 16, seed=9).files(3, 4)
        changes.add("late.wav", store.FileStat(1, 1), "x", 25.0, extra[:4], [0, 5, 10, 15])
        index.commit(changes)
        ann = approximate_lib.ApproximateIndex.update(index)
        assert ann.ann.ntotal == 4004
    with search_lib.Searcher(tmp_path / "idx", approximate=True) as searcher:
        hit = searcher.search_embedding(extra[2], 1)[0]
        assert (hit.path, hit.time) == ("late.wav", 10.0)


def test_search_cli(collection, search_kit, monkeypatch, capsys, tmp_path):
    import atjax

    _, idx = collection
    monkeypatch.setattr(atjax, "load", lambda path: search_kit.model)
    assert search_lib.main([str(idx), "siren"]) == 1  # built in-process: no bundle recorded
    assert "records no model bundle" in capsys.readouterr().err

    assert search_lib.main([str(idx), "siren", "-k", "3", "--model", "b"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "time", "file"]
    assert table[1].split()[2:] == ["0:10.0", "long.wav"] and len(table) == 4

    assert search_lib.main([str(idx), "a dog barks", "--json", "--model", "b"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["results"][0]["path"] == "dog.wav" and len(result["results"]) == 6
    assert set(result["results"][0]) == {"file_id", "path", "abspath", "time", "end", "score"}

    example = tmp_path / "example.wav"
    soundfile.write(example, search_kit.render("bell", 2.0, 16000), 16000)
    assert search_lib.main([str(idx), "--audio", str(example), "--json", "--model", "b"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["path"].endswith("bell.wav")

    assert search_lib.main([str(idx), "   ", "--model", "b"]) == 1
    assert "empty query" in capsys.readouterr().err
    assert search_lib.main([str(tmp_path), "dog", "--model", "b"]) == 1
    assert "not an atjax audio index" in capsys.readouterr().err
    for bad in ([str(idx)], [str(idx), "dog", "--audio", str(example)], [str(idx), "x", "-k", "0"]):
        with pytest.raises(SystemExit):
            search_lib.main(bad)


def test_bench_reports_exactness_and_recall(tmp_path, capsys):
    pytest.importorskip("faiss")
    assert bench.main(["--windows", "3000", "--dim", "32", "--queries", "8",
                       "--brute_force_queries", "4", "--approximate",
                       "--out", str(tmp_path / "bench.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "bench.jsonl").read_text().splitlines()]
    by = {(x.get("dtype"), x["method"]): x for x in lines}
    for dtype in ("float16", "float32"):
        assert by[dtype, "brute"]["exact_matches_brute"] == "4/4"
        assert by[dtype, "exact"]["p95_ms"] >= by[dtype, "exact"]["p50_ms"] > 0
    assert 0.5 <= by["float16", "approximate"]["recall_at_10"] <= 1.0
    assert by[None, "float16_vs_float32"]["top10_overlap"] > 0.9
    assert capsys.readouterr().out.count("\n") == len(lines)


def _best_window_per_file(path, q):
    """Reference: file id -> (best score, its window's start), every vector in float64."""
    with store.AudioIndex.open(path) as index:
        rows, row_file = index.segments()
        scores = np.asarray(rows.vectors, np.float64) @ q.astype(np.float64)
        starts = np.asarray(rows.scalars[:, store.START])
    best = {}
    for row in np.flatnonzero(row_file >= 0):
        f = int(row_file[row])
        if f not in best or scores[row] > best[f][0]:
            best[f] = (float(scores[row]), float(starts[row]))
    return best


def test_approximate_hits_carry_their_files_best_window(tmp_path):
    pytest.importorskip("faiss")
    bench.write_index(tmp_path / "idx", windows=8000, dim=32, dtype="float32",
                      windows_per_file=20, seed=0, log=lambda _: None)
    queries = bench.Generator(32, clusters=16, seed=0).queries(30)
    # Few cells visited: the proposals often hold a lesser window of a file, not its best.
    with search_lib.Searcher(tmp_path / "idx", approximate=True, nprobe=2) as searcher:
        for q in queries:
            hits = searcher.search_embedding(q, 10)
            best = _best_window_per_file(tmp_path / "idx", q)
            assert 0 < len(hits) <= 10  # two cells may hold fewer than 10 files
            for h in hits:
                assert h.score == pytest.approx(best[h.file_id][0], abs=1e-5)
                assert h.time == best[h.file_id][1]
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_approximate_search_with_any_k_and_an_empty_index(tmp_path):
    pytest.importorskip("faiss")
    _random_index(tmp_path / "idx", windows=300, dim=16)
    q = np.random.default_rng(4).standard_normal(16).astype(np.float32)
    with search_lib.Searcher(tmp_path / "idx", approximate=True) as searcher:
        everything = searcher.search_embedding(q, 10**12)  # faiss is asked for at most all
    assert len(everything) == 60  # 300 windows, 5 per file
    with store.AudioIndex.create(tmp_path / "empty", store.Settings(
            dim=16, dtype="float16", window_seconds=10, hop_seconds=5, sample_rate=16000,
            root=str(tmp_path)), {"bundle": None, "sample_rate": 16000, "fingerprint": {}}):
        pass
    with search_lib.Searcher(tmp_path / "empty", approximate=True) as searcher:
        assert searcher.search_embedding(q, 10**12) == []
    with pytest.raises(ValueError, match="nprobe"):
        search_lib.Searcher(tmp_path / "idx", approximate=True, nprobe=0)


@pytest.mark.parametrize("args, message", [
    (["--nprobe", "0"], "--nprobe: must be at least 1"),
    (["--nprobe", "-3"], "--nprobe: must be at least 1"),
    (["-k", "1e12"], "-k: expected a whole number"),
    (["-k", "-1"], "-k: must be at least 1"),
])
def test_search_cli_refuses_bad_arguments(collection, search_kit, monkeypatch, capsys, args,
                                          message):
    import atjax

    _, idx = collection
    monkeypatch.setattr(atjax, "load", lambda path: search_kit.model)
    with pytest.raises(SystemExit) as exit_info:
        search_lib.main([str(idx), "dog", "--model", "b", "--approximate", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_search_cli_reports_errors_without_a_traceback(collection, search_kit, monkeypatch,
                                                       capsys, tmp_path):
    import sys

    import atjax

    _, idx = collection
    monkeypatch.setattr(atjax, "load", lambda path: search_kit.model)
    pytest.importorskip("faiss")
    assert search_lib.main([str(idx), "dog", "--model", "b", "--approximate",
                            "-k", str(10**12)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7  # the header and the 6 files
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    assert search_lib.main([str(idx), "--audio", str(tmp_path / "junk.wav"), "--model",
                            "b"]) == 1
    assert "error: cannot decode audio file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert search_lib.main([str(idx), "dog", "--model", "b", "--approximate"]) == 1
    assert "error: approximate search needs faiss" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["atjax.index", "atjax.search", "atjax.serve"])
def test_the_commands_run_as_modules(command):
    """python -m runs each command's main (atjax/index.py, atjax/search/__main__.py,
    atjax/serve.py): its help names it, and a call without arguments is a usage error."""
    import subprocess
    import sys

    ran = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"usage: python -m {command} ")
    assert "--verbose" in ran.stdout
    ran = subprocess.run([sys.executable, "-m", command], capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 2 and "the following arguments are required" in ran.stderr
