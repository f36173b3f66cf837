"""The paper's experiments (Wu et al., ICASSP 2023), one config argument per experiment.

  python -m atjax.train --config configs/paper.py:table5-transformer-acba --workdir runs/x \
      --config.model.audio.checkpoint=/data/panns/ResNet38_mAP=0.434.pth \
      --config.model.text.path=/data/hf/roberta-large --config.data.data_dir=/data/tfds

Arguments:
  baseline
      The paper's baseline: RoBERTa-Large, MLP heads, original pre-training data. It is
      the RoBERTa-Large row of Table 1, "Original" of Table 2 and "MLP | Original" of
      Table 5, one experiment: `table1-roberta-large`, `table2-original` and
      `table5-mlp-original` are accepted as its other names and all build this config,
      with `experiment` = "baseline" (train it once; atjax.report shows the run in each
      of those tables).
  table1-bert-base | table1-bert-large | table1-roberta-base | table1-roberta-large
      Table 1: the baseline (MLP heads) with each text encoder, original pre-training data.
  table2-original | table2-nv
      Table 2: captions as they are, or reduced to nouns and verbs (spaCy POS).
  table5-{mlp,transformer}-{original,acba}
      Table 5 / Figs. 2-3: Agg/Proj head x pre-training data (+ACBA adds 50k synthetic
      before/after pairs to the 123k, synthesised on the fly: 50 / 173 of each batch).
The default (no argument) is the baseline.
"""

import ml_collections

from atjax import model as model_lib

PRETRAIN = "audiocaps:train+clotho:development+macs:train+fsd50k:train"
PRETRAIN_PAIRS = 123_000     # paper, Sec. 2.2
ACBA_PAIRS = 50_000          # paper, Sec. 3.3
BATCH_SIZE = 64

TEXT_ENCODERS = ("bert-base", "bert-large", "roberta-base", "roberta-large")
BASELINE = "baseline"
# The baseline's names in the paper's tables: one experiment, one config.
BASELINE_ALIASES = ("table1-roberta-large", "table2-original", "table5-mlp-original")


def experiment_name(arg: str | None) -> str:
    """The canonical experiment name of a config argument (the baseline's aliases resolve
    to "baseline"); raises ValueError for an unknown one."""
    arg = arg or BASELINE
    _parse(arg)
    return BASELINE if arg in BASELINE_ALIASES else arg


def _parse(arg: str | None) -> dict:
    arg = arg or BASELINE
    if arg == BASELINE or arg in BASELINE_ALIASES:
        return dict(text="roberta-large", head="mlp", data="original")
    if arg.startswith("table1-") and arg[len("table1-"):] in TEXT_ENCODERS:
        return dict(text=arg[len("table1-"):], head="mlp", data="original")
    if arg in ("table2-original", "table2-nv"):
        return dict(text="roberta-large", head="mlp", data=arg.split("-")[1])
    parts = arg.split("-")
    if len(parts) == 3 and parts[0] == "table5" and parts[1] in ("mlp", "transformer") \
            and parts[2] in ("original", "acba"):
        return dict(text="roberta-large", head=parts[1], data=parts[2])
    raise ValueError(f"unknown experiment {arg!r}; see the docstring of configs/paper.py")


def get_config(arg=None):
    exp = _parse(arg)
    c = ml_collections.ConfigDict()
    c.experiment = experiment_name(arg)
    c.seed = 0
    c.batch_size = BATCH_SIZE
    pairs = PRETRAIN_PAIRS + (ACBA_PAIRS if exp["data"] == "acba" else 0)
    steps_per_epoch = pairs // BATCH_SIZE
    c.total_steps = 60 * steps_per_epoch          # early stopping usually ends it sooner
    c.log_every_steps = 50
    c.eval_every_steps = steps_per_epoch          # validate once per epoch
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.best_metric = "audiocaps_val/t2a_R@10"      # early stopping + best checkpoint
    c.best_mode = "max"
    c.early_stopping_patience = 5                 # evaluations without improvement

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        grad_clip_norm=0.0, warmup_steps=0,
        # StepLR(step_size=20 epochs, gamma=0.1)
        decay_every_steps=20 * steps_per_epoch, decay_rate=0.1,
        text_learning_rate_scale=1.0))

    c.model = model_lib.default_config()
    # The kernels written for GPUs (atjax.kernels, docs/kernels.md): the same functions,
    # with 16-bit dropout masks; on CPUs most fall back to the plain ops.
    c.model.kernels = "fast"
    c.model.head = exp["head"]
    c.model.text.encoder = exp["text"]
    c.model.text.path = ""          # set to the local Hugging Face folder of the encoder
    c.model.audio.checkpoint = ""   # set to ResNet38_mAP=0.434.pth (or its orbax conversion)

    from data_pipeline import pipeline  # the data block's fields are the pipeline's
    c.data = pipeline.default_config()
    c.data.sources = PRETRAIN
    c.data.text_transform = "nv" if exp["data"] == "nv" else "none"
    c.data.acba_fraction = ACBA_PAIRS / (PRETRAIN_PAIRS + ACBA_PAIRS) if exp["data"] == "acba" else 0.0

    c.evals = ml_collections.ConfigDict()
    c.evals.audiocaps_val = ml_collections.ConfigDict(dict(
        type="retrieval", dataset="audiocaps", split="val"))
    return c
