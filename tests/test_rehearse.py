"""launch/rehearse.py: the paper's path end to end, and its check of the report."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from atjax import report
from atjax.evaluate import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = ROOT / "launch" / "rehearse.py"


def _rehearse():
    spec = importlib.util.spec_from_file_location("rehearse_under_test", COMMAND)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root, name, task, model, experiment, metrics):
    exp = {f: "" for f in results_lib.EXPERIMENT_FIELDS} | experiment
    rec = results_lib.record(task, model, metrics, {}, exp)
    results_lib.write(root / name, rec)


def _ci(name, value):
    return {name: value, f"{name}_ci_low": value - 0.1, f"{name}_ci_high": value + 0.1}


def _counts(prefix):
    out = {}
    for k, word in enumerate(("before", "after", "then", "followed_by")):
        out[f"{prefix}_{word}_count"] = k + 1
        out[f"{prefix}_{word}_share"] = (k + 1) / 20
    return out


@pytest.fixture
def complete_report(tmp_path):
    """A report of the rehearsal's two evaluated runs, every task's figures present."""
    root = tmp_path / "results"
    runs = {"baseline": dict(name="baseline", text_encoder="roberta-large", head="mlp",
                             data="original", batches="random"),
            "main": dict(name="table5-transformer-acba", text_encoder="roberta-large",
                         head="transformer", data="acba", batches="random")}
    for run, exp in runs.items():
        model = f"bundles/{exp['name']}"
        _write(root, f"{run}/retrieval", "retrieval", model, exp,
               {"audiocaps/t2a_R@10": 0.5, "clotho/t2a_R@10": 0.4, "clotho_2022/t2a_R@10": 0.3})
        _write(root, f"{run}/zeroshot", "zeroshot", model, exp,
               {"esc50/f1": 0.2, "urbansound8k/f1": 0.25})
        _write(root, f"{run}/sed", "sed", model, exp, {"desed/f1": 0.1})
        _write(root, f"{run}/probes", "probes", model, exp,
               {"sentences": 20, **_counts("pte"), **_counts("tr"),
                **_ci("then_r10", 0.5), **_ci("then_as_r10", 0.5), **_ci("as_r10", 0.5),
                **_ci("as_then_r10", 0.5), **_ci("swap_r1_original", 0.4),
                **_ci("swap_r1_swapped", 0.3), **_ci("swap_r1_delta", 0.1),
                **_ci("bat", 0.5), **_ci("acba_bat", 0.6), **_ci("acba_bat_order_blind", 0.5),
                **_ci("acba_twin", 0.7)})
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    return out


EXPECTED = {"baseline": ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Fig. 2",
                         "Fig. 3"),
            "table5-transformer-acba": ("Table 4", "Table 5", "Fig. 3")}


def test_check_passes_a_complete_report(complete_report):
    rehearse = _rehearse()
    assert rehearse.check_report(complete_report, EXPECTED) is None


def _doctor(report_dir, section, pattern, replacement):
    """report.md with the first match of `pattern` in `section`'s table replaced."""
    path = report_dir / "report.md"
    text = path.read_text()
    start = text.index(f"### {section}")
    end = text.find("\n### ", start + 1)
    end = len(text) if end < 0 else end
    block, count = re.subn(pattern, replacement, text[start:end], count=1)
    assert count == 1, (section, pattern)
    path.write_text(text[:start] + block + text[end:])


@pytest.mark.parametrize("section,pattern,replacement,named", [
    # one empty cell of ours in a row that has others: the DESED F1 of the baseline
    ("Table 1", r"\| 0\.100 \(0\.611\) \|", "| – (0.611) |", "Table 1, row 'RoBERTa-Large', "
     "column 'DESED F1': '–'"),
    # a probe figure lost with its interval
    ("Fig. 3", r"0\.700 \[0\.600, 0\.800\]", "not run", "Fig. 3, row "),
    # a whole section without a figure of ours
    ("Table 3", r"\| baseline \|.*\|", "| ours | not run | not run | not run | not run |",
     "Table 3: no row holds figures of ours"),
])
def test_check_names_the_first_missing_cell(complete_report, section, pattern, replacement,
                                            named):
    rehearse = _rehearse()
    _doctor(complete_report, section, pattern, replacement)
    problem = rehearse.check_report(complete_report, EXPECTED)
    assert problem is not None and problem.startswith(named), problem


def test_check_names_a_missing_plot_and_a_run_not_shown(complete_report):
    rehearse = _rehearse()
    (complete_report / "fig3_bat.png").unlink()
    assert "fig3_bat.png is missing" in rehearse.check_report(complete_report, EXPECTED)
    (complete_report / "fig3_bat.png").write_bytes(b"\x89PNG")
    wanted = dict(EXPECTED, **{"table5-transformer-acba": ("Table 3",)})
    assert rehearse.check_report(complete_report, wanted) == \
        "Runs: 'table5-transformer-acba' is not shown in Table 3"
    assert "not in the report" in rehearse.check_report(complete_report, {"table2-nv": ()})


def test_a_stage_fails_naming_a_known_break_even_when_it_exits_0(tmp_path):
    rehearse = _rehearse()
    rehearsal = rehearse.Rehearsal(tmp_path)
    line = ("W1204 summary.py:12] Summary name val/audiocaps_val/t2a_R@10 is illegal; "
            "using val/audiocaps_val/t2a_R_10 instead.")
    with pytest.raises(rehearse.RehearsalError, match="known break present: TensorBoard"):
        rehearsal.run("train", "stage", [sys.executable, "-c", f"print({line!r})"])
    with pytest.raises(rehearse.RehearsalError, match=r"exited 3 .*\n    last words"):
        rehearsal.run("export", "other", [sys.executable, "-c",
                                          "print('last words'); raise SystemExit(3)"])
    assert rehearsal.run("report", "fine", [sys.executable, "-c", "print('ok')"]) == "ok\n"
    assert (tmp_path / "logs" / "fine.log").read_text() == "ok\n"


def test_refuses_an_output_folder_in_use(tmp_path):
    (tmp_path / "old").write_text("x")
    proc = subprocess.run([sys.executable, str(COMMAND), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_rehearsal_end_to_end(tmp_path):
    out = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(COMMAND), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ),
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = re.findall(r"^\[rehearse +[\d.]+ s\] (\w+):", proc.stdout, flags=re.MULTILINE)
    for stage in ("releases", "prepare", "experiments", "train", "export", "evaluate",
                  "report", "check"):
        assert stage in stages, stage
    # The check, again, independently of the command's own verdict.
    rehearse = _rehearse()
    assert rehearse.check_report(out / "report", EXPECTED) is None
    sed = [json.loads((out / "results" / run / "sed" / "results.json").read_text())
           for run in EXPECTED]
    assert all(r["desed/f1"] is not None and r["desed/recall"] is not None for r in sed)
    markdown = (out / "report" / "report.md").read_text()
    assert "| RoBERTa-Large |" in markdown
    # every distinct experiment of configs/paper.py took its steps
    for name in ("table1-bert-base", "table1-bert-large", "table1-roberta-base", "table2-nv",
                 "table5-transformer-original", "table5-mlp-acba", "baseline",
                 "table5-transformer-acba"):
        assert (out / "runs" / name / "metrics.jsonl").is_file(), name
