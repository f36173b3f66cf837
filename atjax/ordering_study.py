"""`python -m atjax.ordering_study --out runs/ordering`: the built-in default job.

The paper's central question on the built-in synthetic corpus, rerunnable on a laptop:
can an audio-text model tell "A before B" from "B before A", and is temporal pooling (the
MLP baseline) what stops it? It trains the four combinations of Agg/Proj head
(mlp | transformer) and batch regime (random | order_hard) for each seed, evaluates each
on the held-out split with the order probes and their controls (atjax.evaluate probes),
adds an untrained model as a floor, prints the comparison, and writes:
  OUT/<run>/workdir/      the training run (checkpoints, metrics.jsonl, TensorBoard)
  OUT/<run>/results.json  its probe results (with bootstrap confidence intervals)
  OUT/summary.json, OUT/summary.md, OUT/ordering.png   the comparison over seeds
  OUT/report/             `atjax.report` of every run (tables + plots)
Re-running with the same --out resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import sys
import time

from atjax import console

log = logging.getLogger(__name__)

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
METRICS = ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "twin", "bat",
           "bat_order_blind", "twin_audio_cosine", "unrelated_audio_cosine",
           "swap_text_cosine", "unrelated_text_cosine")
HEADLINE = {"single_r1": "single R@1", "pair_r1": "pair R@1",
            "swap_r1_original": "PTe-style R@1 orig", "swap_r1_swapped": "R@1 swapped",
            "twin": "twin test", "bat": "BAT", "bat_order_blind": "BAT order-blind",
            "twin_audio_cosine": "audio cos(pair, twin)",
            "unrelated_audio_cosine": "audio cos(pair, unrelated)",
            "swap_text_cosine": "text cos(caption, clause-swapped)",
            "unrelated_text_cosine": "text cos(caption, unrelated)"}
# What an order-blind side gives for the cosines (a pair and its reversed form embed alike).
ORDER_BLIND = {"twin_audio_cosine": 1.0, "swap_text_cosine": 1.0}
# The learning curves: the probes on a fixed part of the held-out split during training
# (config.evals.curve of configs/synthetic.py).
CURVE_EVAL = "curve"
CURVES = (("single_r1", "single R@1"), ("pair_r1", "pair R@1"), ("twin", "twin test"),
          ("twin_audio_cosine", "audio cos(pair, twin)"))

def _config(head: str, batches: str, seed: int, args):
    from atjax import config as config_lib

    overrides = [f"seed={seed}", f"data.data_dir={args.data_dir}"]
    if args.size == "tiny":
        spec = f"{CONFIG}:head={head},batches={batches},size=tiny"
    else:
        spec = f"{CONFIG}:head={head},batches={batches}"
    config = config_lib.load(spec, overrides)
    if args.steps and args.steps != config.total_steps:
        # Another budget stretches the whole schedule: StepLR's decays, the curve points
        # and the checkpoints fall at the same fractions of training.
        scale = args.steps / config.total_steps if config.total_steps else 1.0
        o = config.optimizer
        with config.unlocked():
            for owner, name in ((o, "decay_every_steps"), (o, "warmup_steps"),
                                (config, "eval_every_steps"),
                                (config, "checkpoint_every_steps")):
                if owner[name] and owner[name] < config.total_steps:
                    owner[name] = max(1, round(owner[name] * scale))
            config.total_steps = args.steps
    return config


def _prepare_corpus(config, data_dir: str) -> None:
    """The corpus needs no downloads: generate it (once) at the model's sample rate."""
    from data_pipeline import prepare

    prepare.prepare("synthetic_events", data_dir=data_dir,
                    sample_rate=int(config.model.audio.frontend.sample_rate))


def _evaluate(embedder, run_dir: pathlib.Path, model_label: str, args) -> dict:
    from atjax import evaluate

    record = evaluate.evaluate("probes", embedder, model=model_label, out=run_dir,
                               data_dir=args.data_dir)
    return record


def _curve(workdir: pathlib.Path) -> list[dict]:
    """The learning curve that the run's trainer logged: one row per evaluation step."""
    path = workdir / "metrics.jsonl"
    prefix = f"val/{CURVE_EVAL}/"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            values = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
            if values:
                rows.append({"step": record["step"], **values})
    return rows


def _run_one(name: str, head: str, batches: str, seed: int, args, *, train: bool) -> dict:
    from atjax import evaluators
    from atjax import trainer as trainer_lib

    run_dir = pathlib.Path(args.out) / name
    results = run_dir / "results.json"
    config = _config(head, batches, seed, args)
    config.unlock()
    # One experiment name per run, so that tables and plots tell seeds and floors apart.
    config.experiment = f"synthetic-{name}"
    if not train:
        config.total_steps = 0
    elif not config.eval_every_steps and CURVE_EVAL in config.evals:
        # A config without its own schedule (the tiny one) gets five curve points.
        config.eval_every_steps = max(1, config.total_steps // 5)
    study = {"size": args.size, "steps": int(config.total_steps), "seed": seed}
    if results.is_file():
        record = json.loads(results.read_text())
        done = {k: record.get("study", {"steps": record.get("steps")}).get(k, v)
                for k, v in study.items()}
        if done != study:
            # A finished run is reused as it is: other settings would be silently ignored.
            raise SystemExit(f"error: {run_dir} holds a finished run with {done}, not the "
                             f"{study} asked for: choose another --out or remove {run_dir}")
        log.info("%s: already done (%s)", name, results)
        return record
    start = time.perf_counter()
    trainer = trainer_lib.Trainer(config, run_dir / "workdir",
                                  evaluate_fn=evaluators.from_config(config) if train else None,
                                  progress=not args.no_progress)
    if train:
        result = trainer.train()
        if result.step < config.total_steps:
            # Preempted (SIGTERM) or stopped early: no results are recorded for a run that
            # did not train its steps, so that rerunning resumes it.
            raise SystemExit(f"{name} stopped at step {result.step} of {config.total_steps} "
                             f"({'preempted' if result.preempted else 'stopped early'}); "
                             "rerun the same command to resume it")
    train_seconds = time.perf_counter() - start
    record = _evaluate(trainer.embedder(), run_dir, str(run_dir / "workdir"), args)
    record["train_seconds"] = round(train_seconds, 1)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["steps"] = int(config.total_steps)
    record["study"] = study
    record["curve"] = _curve(run_dir / "workdir")
    results.write_text(json.dumps(record, indent=2))
    return record


def _metrics(record: dict) -> dict:
    """A run's figures: results.json holds them at its top level (older: under "metrics")."""
    return record.get("metrics", record)


def _values(recs: list[dict], key: str) -> list[float]:
    return [_metrics(r)[key] for r in recs if key in _metrics(r)]


def _aggregate(records: dict[str, list[dict]]) -> dict[str, dict]:
    """Per group: the mean over seeds, each seed's value, and the interval that covers every
    seed's 95% bootstrap interval (items resampled, pairs with their twins)."""
    summary = {}
    for group, recs in records.items():
        row = {"seeds": len(recs)}
        for key in METRICS:
            values = _values(recs, key)
            if not values:
                continue
            row[key] = statistics.fmean(values)
            row[f"{key}_seeds"] = values
            lows, highs = _values(recs, f"{key}_ci_low"), _values(recs, f"{key}_ci_high")
            if len(lows) == len(values) and len(highs) == len(values):
                row[f"{key}_ci"] = [min(lows), max(highs)]
            chance = _values(recs, f"{key}_chance")
            if chance:
                row[f"{key}_chance"] = statistics.fmean(chance)
        row["curves"] = [r.get("curve", []) for r in recs]
        summary[group] = row
    return summary


def _chance_row(summary: dict[str, dict]) -> dict[str, float]:
    """What random scores give (R@1, twin, BAT), or an order-blind side (the cosines)."""
    row = dict(ORDER_BLIND)
    for group in summary.values():
        for key in METRICS:
            if f"{key}_chance" in group:
                row.setdefault(key, group[f"{key}_chance"])
    return row


def _chance_text(value: float) -> str:
    """Two decimals, or the first two significant digits of a chance below 0.01."""
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def _markdown(summary: dict[str, dict]) -> str:
    header = ["run"] + [HEADLINE[k] for k in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, row in summary.items():
        cells = []
        for key in METRICS:
            if key not in row:
                cells.append("-")
                continue
            text = f"{row[key]:.2f}"
            if f"{key}_ci" in row:
                low, high = row[f"{key}_ci"]
                text += f" [{low:.2f}, {high:.2f}]"
            cells.append(text)
        lines.append(f"| {group} (n={row['seeds']}) | " + " | ".join(cells) + " |")
    chance = _chance_row(summary)
    lines.append("| chance / order-blind | " + " | ".join(
        _chance_text(chance[k]) if k in chance else "-" for k in METRICS) + " |")
    return "\n".join(lines)


def _plot(summary: dict[str, dict], path: pathlib.Path, title: str) -> None:
    """Bars with intervals for the final figures, and the learning curves beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = ("single_r1", "pair_r1", "twin", "bat", "bat_order_blind", "twin_audio_cosine",
            "unrelated_audio_cosine", "swap_text_cosine", "unrelated_text_cosine")
    groups = list(summary)
    chance = _chance_row(summary)
    fig = plt.figure(figsize=(15, 8.5))
    grid = fig.add_gridspec(2, len(CURVES), height_ratios=(1.15, 1))
    ax = fig.add_subplot(grid[0, :])
    x = np.arange(len(keys))
    width = 0.8 / max(len(groups), 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g_i, group in enumerate(groups):
        row = summary[group]
        offset = (g_i - len(groups) / 2 + 0.5) * width
        values = [row.get(k, np.nan) for k in keys]
        low = [row[k] - row[f"{k}_ci"][0] if f"{k}_ci" in row else 0 for k in keys]
        high = [row[f"{k}_ci"][1] - row[k] if f"{k}_ci" in row else 0 for k in keys]
        ax.bar(x + offset, values, width, yerr=[low, high], capsize=2, label=group,
               color=colours[g_i % len(colours)], error_kw=dict(lw=0.8))
        for k_i, key in enumerate(keys):  # each seed as a dot over its bar
            for v in row.get(f"{key}_seeds", []):
                ax.plot(x[k_i] + offset, v, "k.", ms=3)
    for k_i, key in enumerate(keys):  # chance (or order-blind) as a dash over the group
        if key in chance:
            ax.plot([x[k_i] - 0.42, x[k_i] + 0.42], [chance[key]] * 2, color="k", lw=1.2,
                    ls="--")
    ax.set_xticks(x, [HEADLINE[k].replace(" (", "\n(").replace("cos(", "cos\n(")
                      for k in keys], fontsize=8)
    ax.set_ylim(-0.3, 1.08)  # cosines with unrelated clips or captions go below 0
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylabel("share / recall / cosine")
    ax.set_title(f"{title}: final figures on the held-out split (bars: mean over seeds, "
                 "whiskers: 95% bootstrap interval, dots: seeds, dashes: chance or "
                 "order-blind)", fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(groups), 6), loc="upper right")
    trained = [g for g in groups if any(summary[g]["curves"])]
    for c_i, (key, label) in enumerate(CURVES):
        cax = fig.add_subplot(grid[1, c_i])
        for g_i, group in enumerate(groups):
            if group not in trained:
                continue
            for s_i, curve in enumerate(summary[group]["curves"]):
                points = [(p["step"], p[key]) for p in curve if key in p]
                if not points:
                    continue
                steps, values = zip(*points)
                cax.plot(steps, values, marker=".", ms=3, lw=1,
                         color=colours[g_i % len(colours)],
                         label=group if s_i == 0 else None)
                if key == "twin_audio_cosine":
                    unrelated = [(p["step"], p["unrelated_audio_cosine"]) for p in curve
                                 if "unrelated_audio_cosine" in p]
                    if unrelated:
                        cax.plot(*zip(*unrelated), lw=0.8, ls=":",
                                 color=colours[g_i % len(colours)])
        if key in chance:
            cax.axhline(chance[key], color="k", lw=0.8, ls="--")
        cax.set_title(label + (" (dotted: with an unrelated pair)"
                               if key == "twin_audio_cosine" else ""), fontsize=8)
        cax.set_xlabel("training step", fontsize=8)
        cax.set_ylim(-0.3 if key.endswith("cosine") else 0, 1.05)
        cax.tick_params(labelsize=7)
        if c_i == 0:
            cax.set_ylabel("on a fixed quarter of the held-out split", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.ordering_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ordering",
                        help="folder for the runs, the summary, ordering.png and the report; "
                             "rerunning with the same folder resumes (default %(default)s)")
    parser.add_argument("--data_dir", default=None,
                        help="where the corpus is prepared (default OUT/data)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated training seeds, e.g. 0,1,2 (default %(default)s)")
    parser.add_argument("--heads", default="mlp,transformer",
                        help="comma-separated Agg/Proj heads: mlp (the paper's baseline), "
                             "transformer (its proposal) (default %(default)s)")
    parser.add_argument("--batches", default="random,order_hard",
                        help="comma-separated batch regimes: random (the paper's), order_hard "
                             "(each pair's reversed twin in the same batch) "
                             "(default %(default)s)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps per run (0: the config's, 400), e.g. 2000 for "
                             "the 5x budget; the learning-rate decays, curve points and "
                             "checkpoints stretch with it")
    parser.add_argument("--size", default="default", choices=("default", "tiny"),
                        help="tiny: a seconds-long smoke run (tests)")
    parser.add_argument("--no_untrained", action="store_true", help="skip the untrained floor")
    parser.add_argument("--no_progress", action="store_true",
                        help="log lines instead of progress bars (batch jobs)")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)  # before the configs import TensorFlow
    out = pathlib.Path(args.out)
    args.data_dir = str(pathlib.Path(args.data_dir or out / "data").absolute())
    heads = args.heads.split(",")
    regimes = args.batches.split(",")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.steps < 0:
        parser.error(f"--steps must be >= 0 (0: the config's), got {args.steps}")
    # Every run's config is checked before the first one trains.
    from atjax import config as config_lib
    from atjax import model as model_lib

    try:
        for head in heads:
            for batches in regimes:
                for seed in seeds:
                    config = _config(head, batches, seed, args)
                    config_lib.check_train_config(config)
                    model_lib.check_config(config.model)
    except config_lib.ConfigError as e:
        parser.error(" ".join(str(e).split()))
    folders = (("--out", out), ("--data_dir", pathlib.Path(args.data_dir)))
    for flag, folder in folders:
        if folder.exists() and not folder.is_dir():
            parser.error(f"{flag} {folder} is a file, not a folder")
    for flag, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            parser.error(f"{flag} {folder} cannot be created: {e.strerror or e}")

    start = time.perf_counter()  # the job's own timer: corpus, training, probes, report
    _prepare_corpus(_config(heads[0], regimes[0], seeds[0], args), args.data_dir)
    stages = [] if args.no_untrained else [
        (f"{head} untrained", f"untrained-{head}", head, "random", seeds[0], False)
        for head in heads]
    stages += [(f"{head} {batches}", f"{head}-{batches}-s{seed}", head, batches, seed, True)
               for head in heads for batches in regimes for seed in seeds]
    records: dict[str, list[dict]] = {}
    trained_seconds: list[float] = []  # of the training stages run here, for the estimate
    for number, (group, name, head, batches, seed, train) in enumerate(stages, 1):
        log.info("stage %d/%d: %s", number, len(stages), name)
        stage_start = time.perf_counter()
        record = _run_one(name, head, batches, seed, args, train=train)
        records.setdefault(group, []).append(record)
        seconds = time.perf_counter() - stage_start
        left = sum(1 for stage in stages[number:] if stage[5])
        if train and seconds > 1:
            trained_seconds.append(seconds)
        rate = ""
        if train and record.get("train_seconds"):
            rate = f", {record['steps'] / record['train_seconds']:.2f} steps/s"
        estimate = (f", about {_minutes(left * statistics.fmean(trained_seconds))} left"
                    if left and trained_seconds else "")
        metrics = _metrics(record)
        log.info("stage %d/%d: %s done in %s%s: single R@1 %.2f, twin %.2f; %s since the "
                 "start%s", number, len(stages), name, _minutes(seconds), rate,
                 metrics.get("single_r1", float("nan")), metrics.get("twin", float("nan")),
                 _minutes(time.perf_counter() - start), estimate)
    summary = _aggregate(records)
    table = _markdown(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    steps = sorted({r["steps"] for recs in records.values() for r in recs if r["steps"]})
    title = (f"Event order on the synthetic corpus, {'/'.join(map(str, steps))} steps, "
             f"seeds {','.join(map(str, seeds))}")
    (out / "summary.md").write_text(
        f"# {title}\n\n" + table + "\n\n"
        "Each cell: the mean over seeds [the interval covering every seed's 95% bootstrap "
        "interval]. The last row is what random scores give (R@1, the twin test, BAT) or "
        "what an order-blind side gives (the cosines of a pair with its reversed form). "
        "The order-blind BAT is what the text side alone achieves. The twin test is 0.5 "
        "when either side is order-blind; the audio side alone shows in audio cos(pair, "
        "twin), the cosine of a pair clip's embedding with its reversed twin's, read "
        "against audio cos(pair, unrelated), the cosine with a pair clip that holds "
        "neither of its sounds; the text side alone in text cos(caption, clause-swapped) "
        "against text cos(caption, unrelated). The learning curves are in ordering.png; "
        "per-run intervals in each results.json and in report/report.md.\n")
    _plot(summary, out / "ordering.png", title)
    from atjax import report
    runs, _ = report.load_runs([str(out / name) for name in sorted(
        p.name for p in out.iterdir() if (p / "results.json").is_file())])
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "report.md").write_text(report.render(runs, out / "report"))
    print(table)
    print(f"\nwrote {out / 'summary.md'}, {out / 'ordering.png'} and {out / 'report'}; "
          f"the study took {_minutes(time.perf_counter() - start)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
