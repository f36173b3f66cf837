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

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
METRICS = ("single_r1", "pair_r1", "swap_r1_original", "swap_r1_swapped", "twin", "bat",
           "bat_order_blind", "twin_audio_cosine", "unrelated_audio_cosine",
           "swap_text_cosine")
HEADLINE = {"single_r1": "single R@1", "pair_r1": "pair R@1",
            "swap_r1_original": "PTe-style R@1 orig", "swap_r1_swapped": "R@1 swapped",
            "twin": "twin test", "bat": "BAT", "bat_order_blind": "BAT order-blind",
            "twin_audio_cosine": "audio cos(pair, twin)",
            "unrelated_audio_cosine": "audio cos(pair, unrelated pair)",
            "swap_text_cosine": "text cos(caption, clause-swapped)"}


def _config(head: str, batches: str, seed: int, args):
    from atjax import config as config_lib

    overrides = [f"seed={seed}", f"data.data_dir={args.data_dir}"]
    if args.steps:
        overrides.append(f"total_steps={args.steps}")
    if args.size == "tiny":
        spec = f"{CONFIG}:head={head},batches={batches},size=tiny"
    else:
        spec = f"{CONFIG}:head={head},batches={batches}"
    return config_lib.load(spec, overrides)


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
    study = {"size": args.size, "steps": int(config.total_steps), "seed": seed}
    if results.is_file():
        record = json.loads(results.read_text())
        done = {k: record.get("study", {"steps": record.get("steps")}).get(k, v)
                for k, v in study.items()}
        if done != study:
            # A finished run is reused as it is: other settings would be silently ignored.
            raise SystemExit(f"error: {run_dir} holds a finished run with {done}, not the "
                             f"{study} asked for: choose another --out or remove {run_dir}")
        logging.info("%s: already done (%s)", name, results)
        return record
    start = time.perf_counter()
    trainer = trainer_lib.Trainer(config, run_dir / "workdir",
                                  evaluate_fn=evaluators.from_config(config),
                                  progress=not args.no_progress)
    if train:
        trainer.train()
    train_seconds = time.perf_counter() - start
    record = _evaluate(trainer.embedder(), run_dir, str(run_dir / "workdir"), args)
    record["train_seconds"] = round(train_seconds, 1)
    record["steps"] = int(config.total_steps)
    record["study"] = study
    results.write_text(json.dumps(record, indent=2))
    return record


def _aggregate(records: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Mean over seeds; the bootstrap interval of each single run is kept per run."""
    summary = {}
    for group, recs in records.items():
        row = {}
        for key in METRICS:
            values = [r["metrics"][key] if "metrics" in r else r[key] for r in recs
                      if key in r.get("metrics", r)]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_seeds"] = values
        row["seeds"] = len(recs)
        summary[group] = row
    return summary


def _markdown(summary: dict[str, dict]) -> str:
    header = ["run"] + [HEADLINE[k] for k in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, row in summary.items():
        cells = []
        for key in METRICS:
            if key not in row:
                cells.append("-")
                continue
            seeds = row[f"{key}_seeds"]
            text = f"{row[key]:.2f}"
            if len(seeds) > 1:
                text += " (" + "/".join(f"{v:.2f}" for v in seeds) + ")"
            cells.append(text)
        lines.append(f"| {group} (n={row['seeds']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(summary: dict[str, dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = ("single_r1", "swap_r1_original", "swap_r1_swapped", "twin", "bat", "bat_order_blind")
    groups = list(summary)
    x = np.arange(len(groups))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(groups)), 4))
    for i, key in enumerate(keys):
        values = [summary[g].get(key, np.nan) for g in groups]
        ax.bar(x + (i - len(keys) / 2 + 0.5) * width, values, width, label=HEADLINE[key])
        for g_i, g in enumerate(groups):  # each seed as a dot over its bar
            for v in summary[g].get(f"{key}_seeds", []):
                ax.plot(x[g_i] + (i - len(keys) / 2 + 0.5) * width, v, "k.", ms=3)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, groups, rotation=15, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share / recall")
    ax.set_title("Event order on the synthetic corpus (dashed: chance for twin and BAT)")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.ordering_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ordering")
    parser.add_argument("--data_dir", default=None,
                        help="where the corpus is prepared (default OUT/data)")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument("--heads", default="mlp,transformer")
    parser.add_argument("--batches", default="random,order_hard")
    parser.add_argument("--steps", type=int, default=0, help="override total_steps (0: config)")
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--no_untrained", action="store_true", help="skip the untrained floor")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter

    _prepare_corpus(_config(heads[0], regimes[0], seeds[0], args), args.data_dir)
    start = time.perf_counter()
    records: dict[str, list[dict]] = {}
    if not args.no_untrained:
        for head in heads:
            group = f"{head} untrained"
            records[group] = [_run_one(f"untrained-{head}", head, "random", seeds[0], args,
                                       train=False)]
    for head in heads:
        for batches in regimes:
            group = f"{head} {batches}"
            for seed in seeds:
                name = f"{head}-{batches}-s{seed}"
                logging.info("=== %s ===", name)
                records.setdefault(group, []).append(
                    _run_one(name, head, batches, seed, args, train=True))
    summary = _aggregate(records)
    table = _markdown(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(
        "# Event order on the synthetic corpus\n\n" + table + "\n\n"
        "Chance is 0.5 for the twin test and BAT; the order-blind BAT is what the text side "
        "alone achieves. The twin test is 0.5 when either side is order-blind; the audio "
        "side alone shows in audio cos(pair, twin), the cosine of a pair clip's embedding "
        "with its reversed twin's (1 for order-blind audio), to be read against audio "
        "cos(pair, unrelated pair), the cosine with a pair clip that holds neither of its "
        "sounds. Per-run bootstrap intervals "
        "(pairs resampled with their twins) are in each results.json and in "
        "report/report.md.\n")
    _plot(summary, out / "ordering.png")
    from atjax import report
    runs, _ = report.load_runs([str(out / name) for name in sorted(
        p.name for p in out.iterdir() if (p / "results.json").is_file())])
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "report.md").write_text(report.render(runs, out / "report"))
    print(table)
    print(f"\nwrote {out / 'summary.md'}, {out / 'ordering.png'} and {out / 'report'} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
