"""The README's main job (`python -m atjax.ordering_study`) end to end, on the tiny config."""

import json

import pytest

from atjax import ordering_study


@pytest.mark.slow
def test_study_runs_reports_and_refuses_stale_results(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--size", "tiny", "--heads", "mlp", "--batches", "random",
            "--steps", "1", "--no_untrained", "--no_progress"]
    assert ordering_study.main(args) == 0
    record = json.loads((out / "mlp-random-s0" / "results.json").read_text())
    assert record["study"] == {"size": "tiny", "steps": 1, "seed": 0}
    # Each run carries its own experiment name, so seeds and floors are told apart.
    assert record["experiment"]["name"] == "synthetic-mlp-random-s0"
    assert -1 - 1e-6 <= record["twin_audio_cosine"] <= 1 + 1e-6
    summary = (out / "summary.md").read_text()
    assert "| mlp random (n=1) |" in summary and "audio cos(pair, twin)" in summary
    assert (out / "ordering.png").stat().st_size > 0
    assert "synthetic-mlp-random-s0" in (out / "report" / "report.md").read_text()
    capsys.readouterr()
    # The same call reuses the finished run; other steps would silently reuse it: refused.
    assert ordering_study.main(args) == 0
    assert "| mlp random (n=1) |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"holds a finished run with .*'steps': 1.*'steps': 2"):
        ordering_study.main([a if a != "1" else "2" for a in args])
