"""python -m atjax.report RESULTS... [--out DIR]: the paper's tables and figures from results.

RESULTS are `results.json` files written by `python -m atjax.evaluate` (or folders searched
for them). Files of one model (same "model" entry) are merged into one run; a run is placed
in the paper's tables by its "experiment" entry (atjax.evaluate.results):

  Table 1  head mlp, data original, one row per text_encoder: R@10 on AudioCaps, Clotho,
           Clotho 2022 (retrieval), F1 on ESC-50, US8K (zeroshot), F1 on DESED (sed)
  Table 2  head mlp, data original vs nv: R@10 on the three retrieval sets
  Table 3  head mlp, data original: as/then R@10 (probes on the paper's test sets)
  Table 4  counts per preposition in the test sets (PTe) and the pre-training captions (Tr)
           (probes)
  Table 5  head mlp/transformer x data original/acba: R@10 on the three retrieval sets
  Fig. 2   head x {original, swapped} PTe R@1, data original and acba (fig2_pte.png)
  Fig. 3   BAT per head x data, with the ACBA order controls (fig3_bat.png)
  the zero-shot and SED F1 of every run (Table 1's columns, whatever the run's table),
  and the order probes on the built-in synthetic corpus (runs with data "synthetic",
  synthetic_order.png).

The paper's baseline is one experiment (configs/paper.py: "baseline"; results of its older
names table1-roberta-large, table2-original and table5-mlp-original count as it): one run
of it fills the RoBERTa-Large row of Table 1, "Original" of Table 2 and "MLP | Original" of
Table 5. Every cell shows ours, then the paper's number in parentheses where the paper has
one ("not run" where no results hold the row, "–" where a run lacks the figure); rows and
bars of the paper's own numbers say "paper", and its bars carry no interval (it gives
none); probe figures carry their 95% bootstrap interval in brackets. Runs that fit no
table are listed at the end. The markdown goes to DIR/report.md and to stdout; plots are
PNGs in DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pathlib
import sys
from typing import Sequence

from atjax.evaluate import results as results_lib

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("bert-base", "bert-large", "roberta-base", "roberta-large")
ENCODER_NAMES = {"bert-base": "BERT-Base", "bert-large": "BERT-Large",
                 "roberta-base": "RoBERTa-Base", "roberta-large": "RoBERTa-Large"}
RETRIEVAL = (("AudioCaps", "audiocaps/t2a_R@10"), ("Clotho", "clotho/t2a_R@10"),
             ("Clotho 2022", "clotho_2022/t2a_R@10"))
TABLE1_COLUMNS = RETRIEVAL + (("ESC-50 F1", "esc50/f1"), ("US8K F1", "urbansound8k/f1"),
                              ("DESED F1", "desed/f1"))

# The paper's numbers (Wu et al., ICASSP 2023).
PAPER_TABLE1 = {"bert-base": (.786, .486, .437, .822, .769, .622),
                "bert-large": (.794, .498, .474, .794, .746, .612),
                "roberta-base": (.779, .479, .444, .757, .742, .596),
                "roberta-large": (.798, .505, .477, .78, .753, .611)}
PAPER_TABLE2 = {"original": (.798, .505, .477), "nv": (.796, .524, .506)}
TABLE3_COLUMNS = (("Then", "then_r10", .863), ("r/Then/As", "then_as_r10", .844),
                  ("As", "as_r10", .822), ("r/As/Then", "as_then_r10", .819))
PREPOSITIONS = ("before", "after", "then", "followed by")
PAPER_TABLE4 = {"PTe": ((185, 1.8), (105, 1.0), (1205, 11.7), (1279, 12.4)),
                "Tr": ((1036, 0.8), (1071, 0.9), (8177, 6.6), (8321, 6.8))}
PAPER_FIG2 = {"mlp": (0.405, 0.419), "transformer": (0.486, 0.351)}
PAPER_FIG3 = {("mlp", "original"): 0.50, ("transformer", "original"): 0.55,
              ("mlp", "acba"): 0.51, ("transformer", "acba"): 0.68}
PAPER_TABLE5 = {("mlp", "original"): (.798, .505, .477),
                ("transformer", "original"): (.685, .414, .393),
                ("mlp", "acba"): (.790, .500, .473),
                ("transformer", "acba"): (.730, .425, .405)}
HEADS = {"mlp": "MLP", "transformer": "Transformer"}
# configs/paper.py's names of its baseline: one experiment, reported as "baseline".
BASELINE = "baseline"
EXPERIMENT_ALIASES = {"table1-roberta-large": BASELINE, "table2-original": BASELINE,
                      "table5-mlp-original": BASELINE}
ZEROSHOT_SED_COLUMNS = TABLE1_COLUMNS[3:]
NOT_RUN = "not run"
DATA = {"original": "Original", "nv": "NV", "acba": "+ACBA", "nv+acba": "NV +ACBA",
        "synthetic": "synthetic"}
SYNTHETIC_COLUMNS = ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "bat",
                     "bat_order_blind", "twin", "twin_audio_cosine", "unrelated_audio_cosine",
                     "swap_text_cosine")


# Folder names that say where a run keeps its model, not which run it is.
_GENERIC_FOLDERS = frozenset({"workdir", "checkpoints", "best", "export", "bundle"})


def _model_folder(model: str) -> str:
    parts = [p for p in pathlib.PurePath(model).parts if p not in ("/", "")]
    while len(parts) > 1 and parts[-1] in _GENERIC_FOLDERS:
        parts.pop()
    return parts[-1] if parts else model


def _disambiguate(runs: list[Run]) -> None:
    """Runs sharing an experiment name (seeds of one experiment) are told apart by their
    folders in every table and plot."""
    names: dict[str, int] = {}
    for run in runs:
        names[run.label] = names.get(run.label, 0) + 1
    for run in runs:
        if names[run.label] > 1:
            run.alias = f"{run.label} [{_model_folder(run.model)}]"


@dataclasses.dataclass
class Run:
    """Everything evaluated for one model."""

    model: str
    experiment: dict[str, str]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    synthetic: dict[str, float] = dataclasses.field(default_factory=dict)
    files: list[str] = dataclasses.field(default_factory=list)
    placed: set[str] = dataclasses.field(default_factory=set)
    alias: str = ""  # set by load_runs where two runs share an experiment name

    @property
    def label(self) -> str:
        return self.alias or self.experiment.get("name") or _model_folder(self.model)

    def get(self, key: str):
        value = self.metrics.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else value


def _result_files(paths: Sequence[str]) -> list[pathlib.Path]:
    files = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("results.json"))
            if not found:
                raise FileNotFoundError(f"no results.json below {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results file or folder at {p}")
    return files


def load_runs(paths: Sequence[str]) -> tuple[list[Run], list[str]]:
    """Runs (one per model) from results files, and notes on conflicts."""
    runs: dict[str, Run] = {}
    notes = []
    for path in _result_files(paths):
        rec = results_lib.load(path)
        model = str(rec.get("model", path.parent))
        experiment = {f: str((rec.get("experiment") or {}).get(f, "") or "")
                      for f in results_lib.EXPERIMENT_FIELDS}
        experiment["name"] = EXPERIMENT_ALIASES.get(experiment["name"], experiment["name"])
        run = runs.setdefault(model, Run(model, experiment))
        if run.experiment != experiment:
            notes.append(f"{path}: experiment {experiment} differs from {run.experiment} "
                         f"of an earlier file of {model}; kept the first")
        metrics = results_lib.metrics_of(rec)
        # The probes on the built-in corpus share names with the paper's (bat, swap_r1_*).
        target = run.synthetic if rec["task"] == "probes" and "sentences" not in metrics \
            else run.metrics
        for key, value in metrics.items():
            if key in target and target[key] != value:
                notes.append(f"{path}: {key} = {value} replaces {target[key]} of {model}")
            target[key] = value
        run.files.append(str(path))
    _disambiguate(list(runs.values()))
    return list(runs.values()), notes


# ------------------------------------------------------------------------------------------
# Formatting


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _ci(metrics: dict, key: str) -> str:
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        return ""
    return f" [{low:.3f}, {high:.3f}]"


def _cell(ours, paper=None, ci: str = "", run: bool = True) -> str:
    """Ours (with its interval), then the paper's in parentheses; `run` False: no results
    hold this row at all ("not run"), as opposed to a run that lacks the figure ("–")."""
    text = (_num(ours) + (ci if ours is not None else "")) if run else NOT_RUN
    return f"{text} ({_num(paper)})" if paper is not None else text


def _row(cells: Sequence[str]) -> str:
    # A "|" inside a cell ("MLP | Original") would end the cell and break the table.
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _select(runs: list[Run], **wanted) -> list[Run]:
    return [r for r in runs if all(r.experiment.get(k) == v for k, v in wanted.items())]


def _has(run: Run, keys) -> bool:
    return any(run.get(k) is not None for k in keys)


# ------------------------------------------------------------------------------------------
# Tables


def table1(runs: list[Run]) -> str:
    keys = [k for _, k in TABLE1_COLUMNS]
    rows = []
    chosen = [r for r in _select(runs, head="mlp", data="original") if _has(r, keys)]
    for enc in TEXT_ENCODERS:
        mine = [r for r in chosen if r.experiment["text_encoder"] == enc] or [None]
        for run in mine:
            label = ENCODER_NAMES[enc] + (f" ({run.label})" if run and len(mine) > 1 else "")
            rows.append([label] + [_cell(run.get(k) if run else None, p, run=run is not None)
                                   for k, p in zip(keys, PAPER_TABLE1[enc])])
            if run:
                run.placed.add("Table 1")
    for run in chosen:
        if run.experiment["text_encoder"] not in TEXT_ENCODERS:
            rows.append([f"{run.experiment['text_encoder'] or '?'} ({run.label})"]
                        + [_cell(run.get(k)) for k in keys])
            run.placed.add("Table 1")
    return ("### Table 1: task performance vs. text encoder (baseline, MLP heads)\n\n"
            "R@10 (text-to-audio) and F1; ours (paper).\n\n"
            + _table(["Language model"] + [c for c, _ in TABLE1_COLUMNS], rows))


def table2(runs: list[Run]) -> str:
    keys = [k for _, k in RETRIEVAL]
    rows = []
    for data in ("original", "nv"):
        mine = [r for r in _select(runs, head="mlp", data=data) if _has(r, keys)] or [None]
        for run in mine:
            extra = ""
            if run and (run.experiment["text_encoder"] != "roberta-large" or len(mine) > 1):
                extra = f" ({run.experiment['text_encoder'] or '?'}, {run.label})"
            rows.append([DATA[data] + extra] + [_cell(run.get(k) if run else None, p,
                                                      run=run is not None)
                                                for k, p in zip(keys, PAPER_TABLE2[data])])
            if run:
                run.placed.add("Table 2")
    return ("### Table 2: R@10, pre-trained on original vs. nouns-and-verbs captions\n\n"
            + _table(["Data"] + [c for c, _ in RETRIEVAL], rows))


def table3(runs: list[Run]) -> str:
    keys = [k for _, k, _ in TABLE3_COLUMNS]
    rows = [["paper"] + [_num(p) for _, _, p in TABLE3_COLUMNS]]
    for run in _select(runs, head="mlp", data="original"):
        if _has(run, keys):
            rows.append([run.label] + [_cell(run.get(k), ci=_ci(run.metrics, k)) for k in keys])
            run.placed.add("Table 3")
    if len(rows) == 1:
        rows.append(["ours"] + [NOT_RUN] * len(keys))
    return ("### Table 3: R@10 on sentences with \"then\" or \"as\", original vs. the two "
            "words exchanged (baseline)\n\n"
            + _table(["Model"] + [c for c, _, _ in TABLE3_COLUMNS], rows))


def _table4_rows(runs: list[Run], prefix: str, name: str) -> list[list[str]]:
    """Our rows of one set: one per distinct count (runs that saw the same sentences
    share one row), labelled by the first run with them."""
    rows, seen = [], set()
    for run in runs:
        counts = [run.get(f"{prefix}_{p.replace(' ', '_')}_count") for p in PREPOSITIONS]
        if any(c is None for c in counts):
            continue
        shares = [run.get(f"{prefix}_{p.replace(' ', '_')}_share") for p in PREPOSITIONS]
        row = tuple(f"{int(c)} ({100 * s:.1f}%)" for c, s in zip(counts, shares))
        run.placed.add("Table 4")
        if row in seen:
            continue
        seen.add(row)
        rows.append([f"{name} ({run.label})", *row])
    return rows or [[f"{name} (ours)"] + [NOT_RUN] * len(PREPOSITIONS)]


def table4(runs: list[Run]) -> str:
    rows = [["PTe (paper)"] + [f"{n} ({s}%)" for n, s in PAPER_TABLE4["PTe"]]]
    rows += _table4_rows(runs, "pte", "PTe")
    rows.append(["Tr (paper)"] + [f"{n} ({s}%)" for n, s in PAPER_TABLE4["Tr"]])
    rows += _table4_rows(runs, "tr", "Tr")
    return ("### Table 4: sentences with each preposition\n\n"
            "Count and share of all test sentences (PTe) or pre-training sentences (Tr, "
            "the captions of each run's training sources).\n\n"
            + _table(["Set", "\"before\"", "\"after\"", "\"then\"", "\"followed by\""], rows))


def zeroshot_sed_table(runs: list[Run]) -> str:
    """Table 1's zero-shot and SED columns for every run that has them, whatever its table."""
    keys = [k for _, k in ZEROSHOT_SED_COLUMNS]
    rows = []
    for run in runs:
        if run.synthetic or not _has(run, keys):
            continue
        e = run.experiment
        rows.append([run.label, e.get("text_encoder") or "?", HEADS.get(e.get("head"), "?"),
                     DATA.get(e.get("data"), e.get("data") or "?")]
                    + [_cell(run.get(k)) for k in keys])
        run.placed.add("zero-shot/SED")
    if not rows:
        rows.append([NOT_RUN, "", "", ""] + [NOT_RUN] * len(keys))
    return ("### Zero-shot classification and SED of every run\n\n"
            "F1 on ESC-50, US8K (zeroshot) and DESED (sed) of each run, Table 1's or not.\n\n"
            + _table(["Run", "Text encoder", "Agg/Proj", "Data"]
                     + [c for c, _ in ZEROSHOT_SED_COLUMNS], rows))


def table5(runs: list[Run]) -> str:
    keys = [k for _, k in RETRIEVAL]
    rows = []
    for data in ("original", "acba"):
        for head in ("mlp", "transformer"):
            mine = [r for r in _select(runs, head=head, data=data) if _has(r, keys)] or [None]
            for run in mine:
                label = f"{HEADS[head]} | {DATA[data]}" + (f" ({run.label})" if run and
                                                          len(mine) > 1 else "")
                rows.append([label] + [_cell(run.get(k) if run else None, p,
                                             run=run is not None)
                                       for k, p in zip(keys, PAPER_TABLE5[(head, data)])])
                if run:
                    run.placed.add("Table 5")
    return ("### Table 5: R@10 by Agg/Proj head and pre-training data\n\n"
            + _table(["Agg/Proj | Data"] + [c for c, _ in RETRIEVAL], rows))


def _fig2_rows(runs):
    """(head, data, run) of every run with the clause-swap probe: the paper's original
    data, and the ACBA runs beside them."""
    out = []
    for data in ("original", "acba"):
        for head in ("mlp", "transformer"):
            for run in _select(runs, head=head, data=data):
                if _has(run, ["swap_r1_original"]):
                    out.append((head, data, run))
    return out


def figure2(runs: list[Run], out_dir: pathlib.Path | None) -> str:
    rows = [[f"{HEADS[h]} | {DATA['original']} (paper)", _num(p[0]), _num(p[1]), ""]
            for h, p in PAPER_FIG2.items()]
    entries = _fig2_rows(runs)
    if not entries:
        rows.append(["ours", NOT_RUN, NOT_RUN, NOT_RUN])
    for head, data, run in entries:
        rows.append([f"{HEADS[head]} | {DATA[data]} ({run.label})",
                     _cell(run.get("swap_r1_original"), ci=_ci(run.metrics, "swap_r1_original")),
                     _cell(run.get("swap_r1_swapped"), ci=_ci(run.metrics, "swap_r1_swapped")),
                     _cell(run.get("swap_r1_delta"), ci=_ci(run.metrics, "swap_r1_delta"))])
        run.placed.add("Fig. 2")
    text = ("### Fig. 2: PTe R@1, original vs. clause-swapped queries\n\n"
            "The paper's bars are its baseline and Transformer on the original data; the "
            "ACBA runs are ours only.\n\n"
            + _table(["Agg/Proj | Data", "Original", "Swap", "Original − Swap"], rows))
    if out_dir is not None:
        bars = [(f"{HEADS[h]}\npaper", p, (None, None), True) for h, p in PAPER_FIG2.items()]
        for head, data, run in entries:
            bars.append((f"{HEADS[head]} {DATA[data]}\n{run.label}",
                         (run.get("swap_r1_original"), run.get("swap_r1_swapped")),
                         (_interval(run.metrics, "swap_r1_original"),
                          _interval(run.metrics, "swap_r1_swapped"))))
        _grouped_bars(out_dir / "fig2_pte.png", bars, ("Original", "Swap"), "R@1",
                      "PTe: original vs. swapped clauses", chance=None)
        text += "\n\n![Fig. 2](fig2_pte.png)"
    return text


def figure3(runs: list[Run], out_dir: pathlib.Path | None) -> str:
    rows, bars = [], []
    for data in ("original", "acba"):
        for head in ("mlp", "transformer"):
            paper = PAPER_FIG3[(head, data)]
            rows.append([f"{HEADS[head]} | {DATA[data]} (paper)", _num(paper), "", "", ""])
            bars.append((f"{HEADS[head]} {DATA[data]}\npaper", (paper, None, None, None),
                         (None,) * 4, True))
            for run in _select(runs, head=head, data=data):
                keys = ("bat", "acba_bat", "acba_bat_order_blind", "acba_twin")
                if not _has(run, keys):
                    continue
                rows.append([f"{HEADS[head]} | {DATA[data]} ({run.label})"]
                            + [_cell(run.get(k), ci=_ci(run.metrics, k)) for k in keys])
                bars.append((f"{HEADS[head]} {DATA[data]}\n{run.label}",
                             tuple(run.get(k) for k in keys),
                             tuple(_interval(run.metrics, k) for k in keys)))
                run.placed.add("Fig. 3")
    if not any("Fig. 3" in run.placed for run in runs):
        rows.append(["ours", NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN])
    text = ("### Fig. 3: BAT, with the order controls on ACBA pairs of AudioCaps test clips\n\n"
            "Share of before/after sentences closer to their audio than the sentence with "
            "before<->after exchanged (50% = chance). ACBA BAT is the same test on ACBA pairs; "
            "its order-blind control replaces each clip by the mean of it and its reversed "
            "twin (what the text alone achieves); the twin test asks whether a caption is "
            "closer to its clip than to the reversed twin (50% when the audio or the text "
            "side is order-blind). BAT means something only above its control.\n\n"
            + _table(["Agg/Proj | Data", "BAT", "ACBA BAT", "ACBA order-blind BAT",
                      "ACBA twin"], rows))
    if out_dir is not None:
        _grouped_bars(out_dir / "fig3_bat.png", bars,
                      ("BAT", "ACBA BAT", "ACBA order-blind", "ACBA twin"), "share",
                      "Before/after test and order controls", chance=0.5)
        text += "\n\n![Fig. 3](fig3_bat.png)"
    return text


def synthetic_table(runs: list[Run], out_dir: pathlib.Path | None) -> str:
    chosen = [r for r in runs if r.synthetic]
    if not chosen:
        return ""
    rows, bars = [], []
    for run in chosen:
        e = run.experiment
        label = f"{HEADS.get(e['head'], e['head'] or '?')}, {e['batches'] or '?'} ({run.label})"
        rows.append([label] + [_cell(_value(run.synthetic, k), ci=_ci(run.synthetic, k))
                               for k in SYNTHETIC_COLUMNS])
        bars.append((label.replace(" (", "\n("),
                     tuple(_value(run.synthetic, k) for k in ("bat", "bat_order_blind", "twin")),
                     tuple(_interval(run.synthetic, k)
                           for k in ("bat", "bat_order_blind", "twin"))))
        run.placed.add("synthetic")
    text = ("### Order probes on the built-in synthetic corpus\n\n"
            "R@1 of single-event, pair and clause-swapped pair captions (a clip is correct "
            "when it holds the same events, in the same order for pairs), BAT with its "
            "order-blind control, the twin test (0.5 when either side is order-blind) and "
            "the cosine of a pair clip's audio embedding with its reversed twin's (1 for an "
            "order-blind audio encoder), beside its scale, the cosine with a pair clip that "
            "holds neither of its sounds; 95% bootstrap intervals, pairs resampled with their "
            "twins.\n\n"
            + _table(["Model"] + list(SYNTHETIC_COLUMNS), rows))
    if out_dir is not None:
        _grouped_bars(out_dir / "synthetic_order.png", bars,
                      ("BAT", "order-blind BAT", "twin"), "share",
                      "Synthetic corpus: order probes", chance=0.5)
        text += "\n\n![Synthetic corpus](synthetic_order.png)"
    return text


def _value(metrics, key):
    v = metrics.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _interval(metrics, key):
    return metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")


def _grouped_bars(path: pathlib.Path, groups, series: Sequence[str], ylabel: str, title: str,
                  chance: float | None) -> None:
    """One group of bars per entry: (label, values per series, (low, high) per series[,
    paper]). Only bars with an interval get an error bar; the paper's groups (`paper`
    True), which it gives without intervals, are hatched and named so in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # Long labels (run names) are set at a slant, with room for them, so none overlap.
    longest = max((len(line) for g in groups for line in g[0].split("\n")), default=0)
    slanted = longest * 0.06 > 1.2  # about 0.06 inch per character at 7 pt
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2),
                                    4.0 + (min(longest, 60) * 0.045 if slanted else 0)))
    width = 0.8 / len(series)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_paper = False
    for s, name in enumerate(series):
        color = colors[s % len(colors)]
        bars = {False: ([], []), True: ([], [])}
        err_x, err_y, err_lo, err_hi = [], [], [], []
        for g, group in enumerate(groups):
            values, intervals = group[1], group[2]
            paper = len(group) > 3 and bool(group[3])
            value = values[s]
            if value is None:
                continue
            x = g + (s - (len(series) - 1) / 2) * width
            bars[paper][0].append(x)
            bars[paper][1].append(value)
            any_paper |= paper
            low, high = intervals[s] if intervals[s] else (None, None)
            if low is not None and high is not None:
                err_x.append(x)
                err_y.append(value)
                err_lo.append(value - low)
                err_hi.append(high - value)
        if bars[False][0]:
            ax.bar(bars[False][0], bars[False][1], width, color=color, label=name)
        if bars[True][0]:
            ax.bar(bars[True][0], bars[True][1], width, color=color, hatch="//",
                   edgecolor="white", label=None if bars[False][0] else name)
        if err_x:
            ax.errorbar(err_x, err_y, yerr=[err_lo, err_hi], fmt="none", ecolor="black",
                        elinewidth=1, capsize=3)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=7,
                       rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    if groups and all(len(g) > 3 and g[3] for g in groups):
        title += "\n(the paper's numbers only: no results of ours hold these figures)"
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if any_paper:
        handles.append(Patch(facecolor="lightgrey", hatch="//", edgecolor="white"))
        labels.append("hatched: the paper's (no intervals given)")
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(runs: list[Run], out_dir: pathlib.Path | None = None,
           notes: Sequence[str] = ()) -> str:
    """The whole report as markdown (plots written to out_dir when given)."""
    for run in runs:
        run.placed.clear()
    sections = [
        "# atjax results vs. Wu et al. (ICASSP 2023)\n\n"
        "Cells: ours (paper); [95% bootstrap interval] for probe figures; \"not run\" where "
        "no results hold the row, – where a run lacks the figure; \"paper\" marks the "
        "paper's own numbers.",
        table1(runs), table2(runs), table3(runs), table4(runs), table5(runs),
        figure2(runs, out_dir), figure3(runs, out_dir), zeroshot_sed_table(runs),
        synthetic_table(runs, out_dir)]
    listing = [[r.label, r.experiment.get("text_encoder", ""), r.experiment.get("head", ""),
                r.experiment.get("data", ""), ", ".join(sorted(r.placed)) or "none",
                str(len(r.files))] for r in runs]
    sections.append("### Runs\n\n" + _table(
        ["Run", "Text encoder", "Head", "Data", "Shown in", "Files"], listing))
    if notes:
        sections.append("### Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(s for s in sections if s) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files or folders of them")
    parser.add_argument("--out", default="report", help="folder for report.md and the plots")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs, notes = load_runs(args.results)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render(runs, out_dir, notes)
    (out_dir / "report.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out_dir / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
