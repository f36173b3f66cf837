"""The README's main job (`python -m atjax.ordering_study`) end to end, on the tiny config:
what its summary, table, figure and report hold, checked against each run's results and,
for the audio cosines, against embeddings recomputed here from the trained checkpoint."""

import json
import math
import struct

import numpy as np
import pytest

from atjax import ordering_study

# The summary's columns, in the table's order.
COLUMNS = ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "twin", "bat",
           "bat_order_blind", "twin_audio_cosine", "unrelated_audio_cosine",
           "swap_text_cosine", "unrelated_text_cosine")


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(COLUMNS) + 1:
            rows[cells[0]] = cells[1:]
    return rows


def _audio_cosines(workdir) -> tuple[float, float]:
    """(twin, unrelated) audio cosines of the held-out pairs, from the checkpoint: each
    pair clip whose twin is in the split, once per pair, with its twin; and with the next
    such clip, cyclically, that holds neither of its two sounds."""
    from atjax import export
    from data_pipeline.synthetic_events import corpus

    embedder = export.load(workdir)
    examples = corpus.heldout({"sample_rate": 16000})
    index = {e.id: i for i, e in enumerate(examples)}
    first = [i for i, e in enumerate(examples)
             if e.kind == "pair" and e.twin in index and i < index[e.twin]]
    twins = [index[examples[i].twin] for i in first]
    audio = embedder.embed_audio(np.stack([examples[i].audio for i in first + twins]),
                                 sample_rate=16000).astype(np.float64)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    mine, theirs = audio[:len(first)], audio[len(first):]
    twin = float(np.mean(np.sum(mine * theirs, axis=1)))
    sounds = [{name for name, *_ in examples[i].events} for i in first]
    unrelated = []
    for k in range(len(first)):
        for step in range(1, len(first)):
            other = (k + step) % len(first)
            if not sounds[k] & sounds[other]:
                unrelated.append(float(mine[k] @ mine[other]))
                break
    return twin, float(np.mean(unrelated))


def _text_swap_cosine(workdir) -> float:
    """Mean cosine of each held-out pair caption with its clause-swapped form."""
    from atjax import export
    from atjax.probes import text as text_lib
    from data_pipeline.synthetic_events import corpus

    embedder = export.load(workdir)
    captions = [e.caption for e in corpus.heldout({"sample_rate": 16000}) if e.kind == "pair"]
    swapped = [text_lib.swap_clauses(c) for c in captions]
    kept = [(c, s) for c, s in zip(captions, swapped) if s is not None]
    assert kept
    text = embedder.embed_text([c for c, _ in kept] + [s for _, s in kept]).astype(np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return float(np.mean(np.sum(text[:len(kept)] * text[len(kept):], axis=1)))


@pytest.mark.slow
def test_study_runs_reports_and_refuses_stale_results(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--size", "tiny", "--heads", "mlp", "--batches", "random",
            "--steps", "1", "--no_progress"]
    assert ordering_study.main(args) == 0
    record = json.loads((out / "mlp-random-s0" / "results.json").read_text())
    floor = json.loads((out / "untrained-mlp" / "results.json").read_text())
    assert record["study"] == {"size": "tiny", "steps": 1, "seed": 0}
    assert floor["study"] == {"size": "tiny", "steps": 0, "seed": 0}
    # Each run carries its own experiment name, so seeds and floors are told apart.
    assert record["experiment"]["name"] == "synthetic-mlp-random-s0"
    assert floor["experiment"]["name"] == "synthetic-untrained-mlp"
    runs = {"mlp untrained": floor, "mlp random": record}

    for run in runs.values():
        for key in COLUMNS:
            low, value, high = (run[f"{key}{s}"] for s in ("_ci_low", "", "_ci_high"))
            assert all(math.isfinite(x) for x in (low, value, high)), key
            assert low <= value <= high and run[f"{key}_count"] > 0, key
        assert run["single_r1_count"] + run["pair_r1_count"] + run["mix_r1_count"] == run["clips"]
        assert run["twin_audio_cosine_count"] * 2 == run["pair_r1_count"]  # once per pair
    # One Adam step moved the weights: the trained row is not the floor's model.
    assert record["unrelated_audio_cosine"] != floor["unrelated_audio_cosine"]

    # summary.json and summary.md: every run and column, the runs' own figures.
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == list(runs)
    rows = _table_rows((out / "summary.md").read_text())
    assert list(rows) == (["run"] + [f"{group} (n=1)" for group in runs]
                          + ["chance / order-blind"])
    assert rows["run"][0] == "single R@1" and rows["run"][-4] == "audio cos(pair, twin)"
    assert rows["run"][-2] == "text cos(caption, clause-swapped)"
    for group, run in runs.items():
        assert summary[group]["seeds"] == 1
        for column, key in enumerate(COLUMNS):
            assert math.isfinite(summary[group][key]), (group, key)
            assert summary[group][key] == run[key], (group, key)
            assert summary[group][f"{key}_seeds"] == [run[key]], (group, key)
            low, high = run[f"{key}_ci_low"], run[f"{key}_ci_high"]
            assert summary[group][f"{key}_ci"] == [low, high], (group, key)
            assert rows[f"{group} (n=1)"][column] == f"{run[key]:.2f} [{low:.2f}, {high:.2f}]"
    # Chance: the share of relevant clips per single query (the held-out split's singles of
    # each class among all its clips), 0.5 for the twin test and BAT, 1 for order-blind
    # cosines; no chance for the unrelated cosines.
    from data_pipeline.synthetic_events import corpus
    examples = corpus.heldout({"sample_rate": 16000})
    singles = [e for e in examples if e.kind == "single"]
    per_class = {c: sum(e.events[0][0] == c for e in singles) for c in corpus.CLASS_NAMES}
    single_chance = np.mean([per_class[e.events[0][0]] / len(examples) for e in singles])
    assert record["single_r1_chance"] == pytest.approx(single_chance)
    chance = dict(zip(COLUMNS, rows["chance / order-blind"]))
    assert chance["single_r1"] == f"{single_chance:.2f}"
    assert chance["twin"] == chance["bat"] == chance["bat_order_blind"] == "0.50"
    assert chance["twin_audio_cosine"] == chance["swap_text_cosine"] == "1.00"
    assert chance["unrelated_audio_cosine"] == chance["unrelated_text_cosine"] == "-"

    # The learning curve: the trained run's probes on the fixed quarter of the held-out
    # split, at its evaluation steps (here the one step); none for the untrained floor.
    assert [p["step"] for p in record["curve"]] == [1] and floor["curve"] == []
    point = record["curve"][0]
    assert point["clips"] == 140 and 0 <= point["single_r1"] <= 1
    assert summary["mlp random"]["curves"] == [record["curve"]]

    # The audio cosines, recomputed from the trained run's checkpoint. Close to 1 for
    # so small a model: compared as distances from 1.
    twin, unrelated = _audio_cosines(out / "mlp-random-s0" / "workdir")
    np.testing.assert_allclose(1 - record["twin_audio_cosine"], 1 - twin, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(1 - record["unrelated_audio_cosine"], 1 - unrelated, rtol=1e-3,
                               atol=1e-7)

    # The text cosine, recomputed from the checkpoint: each held-out pair caption whose
    # clauses swap, against its swapped form.
    np.testing.assert_allclose(1 - record["swap_text_cosine"],
                               1 - _text_swap_cosine(out / "mlp-random-s0" / "workdir"),
                               rtol=1e-3, atol=1e-7)

    png = (out / "ordering.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (1650, 935)  # 15 x 8.5 inches at 110 dpi
    report = (out / "report" / "report.md").read_text()
    assert "synthetic-mlp-random-s0" in report and "synthetic-untrained-mlp" in report

    capsys.readouterr()
    # The same call reuses the finished runs; other steps would silently reuse them: refused.
    assert ordering_study.main(args) == 0
    assert "| mlp random (n=1) |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"holds a finished run with .*'steps': 1.*'steps': 2"):
        ordering_study.main([a if a != "1" else "2" for a in args])


def test_a_preempted_run_records_no_results_so_that_a_rerun_resumes_it(tmp_path, monkeypatch):
    from atjax import trainer as trainer_lib

    class Preempted:
        """A Trainer whose run got SIGTERM at step 1 (saved, then left the loop)."""

        def __init__(self, config, workdir, **kwargs):
            self.total = config.total_steps

        def train(self):
            return trainer_lib.TrainResult(step=1, stopped_early=False, preempted=True,
                                           best={})

        def embedder(self):
            raise AssertionError("a run that did not finish is not evaluated")

    monkeypatch.setattr(trainer_lib, "Trainer", Preempted)
    args = type("Args", (), dict(out=str(tmp_path), data_dir=str(tmp_path / "data"),
                                 steps=3, size="tiny", no_progress=True))()
    with pytest.raises(SystemExit, match=r"stopped at step 1 of 3 \(preempted\); rerun"):
        ordering_study._run_one("mlp-random-s0", "mlp", "random", 0, args, train=True)
    assert not (tmp_path / "mlp-random-s0" / "results.json").exists()


def test_steps_stretch_the_schedule_the_curve_points_and_the_checkpoints():
    import argparse

    args = argparse.Namespace(data_dir="/nonexistent", steps=2000, size="default")
    config = ordering_study._config("transformer", "order_hard", 0, args)
    default = ordering_study._config("transformer", "order_hard", 0,
                                     argparse.Namespace(**dict(vars(args), steps=0)))
    scale = 2000 / default.total_steps
    assert config.total_steps == 2000
    assert config.optimizer.decay_every_steps == round(default.optimizer.decay_every_steps * scale)
    assert config.eval_every_steps == round(default.eval_every_steps * scale)
    assert config.checkpoint_every_steps == round(default.checkpoint_every_steps * scale)
    assert config.optimizer.decay_rate == default.optimizer.decay_rate
