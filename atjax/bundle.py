"""Inference bundles: `export` writes one from a training workdir, `load` reads a bundle or a
workdir (`atjax.load`). The command line is atjax.export.

A bundle is a folder:
  atjax_bundle.json  format version, the step and workdir it came from
  config.json        the experiment config (model fields used to rebuild the network)
  params/            orbax checkpoint of {"params", "batch_stats"} (float32)
  tokenizer/         the text encoder's tokenizer files and Hugging Face config.json
  atjax_digest.json  size and SHA-256 of every other file, verified by `load`
`load(path)` accepts a bundle or a training workdir (best checkpoint if any, else the
latest) and returns an `atjax.inference.Embedder`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from atjax import checkpoint as ckpt_lib
from atjax import inference
from atjax import model as model_lib
from atjax import train_step as step_lib
from atjax.encoders import text as text_lib

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MARKER = "atjax_bundle.json"


def _tuples(value):
    """JSON turns tuples into lists; frozen dataclass configs want tuples back."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def read_config(path: pathlib.Path) -> ml_collections.ConfigDict:
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def _abstract_model(config):
    model = nnx.eval_shape(lambda: model_lib.build(config.model, seed=config.seed))
    return step_lib.split_model(model)


def _restore_workdir(workdir: pathlib.Path):
    config = read_config(workdir / "config.json")
    train_def, eval_def, params, batch_stats, rest = _abstract_model(config)
    tx = step_lib.make_optimizer(config, params)
    abstract = jax.eval_shape(lambda p, b: step_lib.init_state(p, b, tx), params, batch_stats)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = ckpt_lib.abstract_like(abstract, sharding)
    best = workdir / "best"
    use_best = best.is_dir() and any(p.name.isdigit() for p in best.iterdir())
    # The best checkpoint is ranked by the metric it was saved with: the run's best_metric.
    checkpoints = ckpt_lib.Checkpoints(
        workdir, keep=1 << 30, best_metric=(config.get("best_metric") or "best_metric")
        if use_best else None, best_mode=config.get("best_mode") or "max")
    try:
        if use_best:
            step = checkpoints.best_step()
            try:
                state, _ = checkpoints.restore(step, abstract, best=True)
            except ckpt_lib.CheckpointDamagedError as e:
                raise ckpt_lib.CheckpointDamagedError(
                    f"{e}; move {best} away to use the latest checkpoint instead") from None
        else:  # the newest intact step, a warning naming each newer, damaged one
            found = checkpoints.restore_latest(abstract)
            if found is None:
                raise FileNotFoundError(f"{workdir} holds no checkpoint (checkpoints/ or best/)")
            step, state, _ = found
    finally:
        checkpoints.close()
    # A fresh `rest` (RNG streams, fixed temperature): eval mode never draws from the RNGs.
    model = model_lib.build(config.model, seed=config.seed)
    *_, rest = step_lib.split_model(model)
    return config, eval_def, state.params, state.batch_stats, rest, int(step)


def export(workdir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the bundle of `workdir`'s best checkpoint (else its latest) to the new folder
    `out`; returns `out`."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if not (workdir / "config.json").is_file():  # before the (slow) restore
        raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new bundle folder")
    config, _, params, batch_stats, _, step = _restore_workdir(workdir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp.absolute() / "params", {"params": params, "batch_stats": batch_stats})
    ckptr.wait_until_finished()
    tokenizer = model_lib.make_tokenizer(config.model)
    tokenizer.save(tmp / "tokenizer")
    hf_config = pathlib.Path(config.model.text.path) / "config.json"
    if hf_config.is_file():
        shutil.copy(hf_config, tmp / "tokenizer" / "config.json")
    bundle_config = ml_collections.ConfigDict(config.to_dict())
    # The bundle's params hold every weight: nothing is loaded from the original folders.
    bundle_config.model.audio.checkpoint = ""
    bundle_config.model.text.pretrained = False
    bundle_config.model.text.path = "tokenizer"
    # A bundle runs anywhere: the attention kernel where it applies, else the einsums
    # (the same function); "pallas" alone would refuse a CPU.
    if model_lib.kernels(bundle_config.model).attention == "pallas":
        if "kernels" in bundle_config.model:
            bundle_config.model.kernel_overrides.attention = "auto"
        else:  # a config written before model.kernels
            bundle_config.model.text.attention_impl = "auto"
    (tmp / "config.json").write_text(bundle_config.to_json_best_effort(indent=2))
    (tmp / MARKER).write_text(json.dumps({"format": BUNDLE_FORMAT, "step": step,
                                          "workdir": str(workdir.absolute())}, indent=2))
    ckpt_lib.write_digest(tmp)  # last: it covers every other file
    tmp.rename(out)  # a bundle either exists whole or not at all
    return out


def _load_bundle(bundle: pathlib.Path) -> inference.Embedder:
    # A file that does not match the digest is an error naming it (CheckpointDamagedError).
    digested = ckpt_lib.verify_digest(bundle)
    if not digested:
        log.warning("%s carries no digest (exported by an older atjax): it is verified "
                        "only by its parameters being finite", bundle)
    meta = json.loads((bundle / MARKER).read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{bundle}: bundle format {meta.get('format')} is not supported "
                         f"(this atjax reads format {BUNDLE_FORMAT})")
    config = read_config(bundle / "config.json")
    config.model.text.path = str(bundle / "tokenizer")
    _, eval_def, params, batch_stats, _ = _abstract_model(config)
    target = {"params": params, "batch_stats": batch_stats}
    restored = ocp.StandardCheckpointer().restore(bundle.absolute() / "params", target)
    error = ckpt_lib.mismatch(f"{bundle}/params", "the model of its config.json",
                              ckpt_lib.shapes(restored), ckpt_lib.shapes(target))
    if error:
        raise error
    bad = ckpt_lib.non_finite_leaves(restored)
    if bad:
        raise ckpt_lib.CheckpointDamagedError(
            f"{bundle} is damaged: non-finite values in {len(bad)} leaves of params/: "
            + ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""))
    params, batch_stats = restored["params"], restored["batch_stats"]
    model = model_lib.build(config.model, seed=config.seed)
    *_, rest = step_lib.split_model(model)
    tokenizer = text_lib.Tokenizer(config.model.text.path, max_length=config.model.text.max_length)
    return inference.Embedder(config, eval_def, params, batch_stats, rest, tokenizer)


def load(path: str | pathlib.Path) -> inference.Embedder:
    """An Embedder from an export bundle or a training workdir."""
    path = pathlib.Path(path)
    if (path / MARKER).is_file():
        return _load_bundle(path)
    if (path / "config.json").is_file() and ((path / "checkpoints").is_dir()
                                             or (path / "best").is_dir()):
        config, eval_def, params, batch_stats, rest, _ = _restore_workdir(path)
        return inference.Embedder(config, eval_def, params, batch_stats, rest,
                                  model_lib.make_tokenizer(config.model))
    raise FileNotFoundError(f"{path} is neither an atjax bundle (no {MARKER}) nor a training "
                            "workdir (config.json + checkpoints/)")
