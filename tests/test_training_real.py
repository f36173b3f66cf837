"""`python -m atjax.train` end to end on the tiny synthetic config: the built-in corpus
prepared on first use in a fresh data folder, the real input pipeline over it, a loss that falls below chance, the checkpoints, and the
validation that `config.evals` asks for, run inside the training run."""

import json
import math
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVAL_EVERY, BATCH = 100, 50, 8


@pytest.mark.slow
def test_train_cli_lowers_the_loss_and_validates_and_checkpoints_in_the_run(tmp_path, caplog):
    import logging

    from atjax import checkpoint as ckpt_lib
    from atjax import export
    from atjax import train

    caplog.set_level(logging.INFO, logger="data_pipeline.datasets")
    # A fresh data folder: the built-in corpus prepares itself on first use.
    data_dir = tmp_path / "data"
    workdir = tmp_path / "run"
    evals = {"val": {"type": "probes", "synthetic_heldout_size": 40, "resamples": 20}}
    # A higher rate than the config's, for every part: the loss then falls within 100
    # steps of 8 examples (about a fifth below its first values on this corpus).
    assert train.main([
        "--config", f"{ROOT}/configs/synthetic.py:size=tiny", "--workdir", str(workdir),
        "--no_progress", f"--config.total_steps={STEPS}", "--config.log_every_steps=1",
        f"--config.eval_every_steps={EVAL_EVERY}", f"--config.checkpoint_every_steps={EVAL_EVERY}",
        f"--config.batch_size={BATCH}", "--config.optimizer.learning_rate=0.005",
        "--config.optimizer.text_learning_rate_scale=1.0", f"--config.data.data_dir={data_dir}",
        f"--config.evals={evals!r}"]) == 0
    assert "synthetic_events at 16000 Hz is not prepared in" in caplog.text
    assert "synthetic_events prepared:" in caplog.text

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]), r
        assert r["learning_rate"] == pytest.approx(0.005)
    # Batch losses are noisy (8 examples): means over 20 steps. Chance, log(8), is where
    # embeddings that tell nothing apart end up; the trained model is clearly below it.
    loss = np.array([r["loss"] for r in steps])
    first, last = loss[:20].mean(), loss[-20:].mean()
    assert last < first - 0.15, (first, last, loss.round(2).tolist())
    assert last < math.log(BATCH) - 0.05, (first, last, loss.round(2).tolist())

    # The validation: every figure of the synthetic probes, finite, at each evaluation step.
    evaluated = [r for r in records if any(k.startswith("val/") for k in r)]
    assert [r["step"] for r in evaluated] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for r in evaluated:
        figures = {k: v for k, v in r.items() if k.startswith("val/val/")}
        for name in ("single_r1", "pair_r1", "mix_r1", "swap_r1_original", "swap_r1_swapped",
                     "bat", "bat_order_blind", "twin", "twin_audio_cosine",
                     "unrelated_audio_cosine"):
            for key in (name, f"{name}_ci_low", f"{name}_ci_high"):
                assert math.isfinite(figures[f"val/val/{key}"]), (r["step"], key)
            assert figures[f"val/val/{name}_count"] > 0, name
            assert (figures[f"val/val/{name}_ci_low"] <= figures[f"val/val/{name}"]
                    <= figures[f"val/val/{name}_ci_high"]), name
        assert figures["val/val/clips"] == 40
        assert r["val/seconds"] > 0

    # Checkpoints at the cadence (two kept), the last one restorable into an embedder.
    checkpoints = ckpt_lib.Checkpoints(workdir, keep=2, best_metric=None)
    assert checkpoints.latest.all_steps() == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    checkpoints.close()
    embedder = export.load(workdir)
    clips = np.random.default_rng(0).standard_normal((2, 48000)).astype(np.float32) * 0.1
    assert np.all(np.isfinite(embedder.embed_audio(clips, sample_rate=16000)))
