"""Orbax checkpoints of a training run: resume, best-by-validation, retention.

Layout of a workdir:
  config.json            the resolved experiment config (written once)
  checkpoints/<step>/    periodic: train state + input position (keep the latest N)
  best/<step>/           the best by the validation metric (keep 1), same items
The input position is saved in the same checkpoint as the state, so a resumed run sees
exactly the examples it would have seen.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp

from atjax.encoders import panns


class CheckpointMismatchError(ValueError):
    """A checkpoint whose saved state does not fit the model being restored into."""


class Checkpoints:
    def __init__(self, workdir: str | pathlib.Path, *, keep: int, best_metric: str | None,
                 best_mode: str = "max"):
        workdir = pathlib.Path(workdir).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "input"))
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                workdir / "best",
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                    best_mode=best_mode),
                item_names=("state", "input"))

    @staticmethod
    def _args(state, input_state):
        return ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  input=ocp.args.JsonSave(input_state or {}))

    def save(self, step: int, state: Any, input_state: dict | None, *, force: bool = False):
        self.latest.save(step, args=self._args(state, input_state), force=force)

    def save_best(self, step: int, state: Any, input_state: dict | None,
                  metrics: dict[str, float]) -> None:
        if self.best is None or self.best_metric not in metrics:
            return
        if step in self.best.all_steps():
            # Written by an interrupted run that a resumed one has caught up with: the same
            # step of a deterministic run is the same state.
            return
        self.best.save(step, args=self._args(state, input_state), metrics=metrics)

    def best_step(self) -> int | None:
        """The step of the best checkpoint (None without one)."""
        if self.best is None:
            return None
        steps = self.best.all_steps()
        # best/ keeps one; ranking several needs the metric each was saved with.
        return steps[0] if len(steps) == 1 else self.best.best_step()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, step: int, abstract_state: Any, *, best: bool = False):
        """Returns (state, input_state) with the shardings of `abstract_state`."""
        manager = self.best if best else self.latest

        def attempt(target):
            return manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), input=ocp.args.JsonRestore()))

        # A run saved by older code resumes rather than losing its progress: its state is
        # tried in each older layout (OLDER_LAYOUTS) after the current one fails, and
        # converted; a checkpoint that fits none gets the current layout's error.
        try:
            restored = attempt(abstract_state)
            state = restored.state
        except ValueError as error:
            for name, saved_form, to_current in OLDER_LAYOUTS:
                try:
                    restored = attempt(saved_form(abstract_state))
                except ValueError:
                    continue
                state = to_current(restored.state)
                logging.warning("step %d of %s was saved in an older layout (%s); restored "
                                "it into the current one", step, manager.directory, name)
                break
            else:
                raise CheckpointMismatchError(self._mismatch(manager, step, abstract_state,
                                                             error)) from None
        logging.info("restored step %d from %s", step, manager.directory)
        return state, dict(restored.input or {})

    @staticmethod
    def _mismatch(manager, step: int, abstract_state: Any, error: Exception) -> str:
        """What does not fit, leaf by leaf, as far as the checkpoint's metadata says."""
        try:
            saved = manager.item_metadata(step)["state"]
            saved = getattr(saved, "tree", saved)
            has_shape = lambda x: hasattr(x, "shape")  # noqa: E731

            def shapes(tree):  # by path, a dataclass's fields and a dict's keys alike
                return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                                 for k in p): tuple(x.shape) for p, x in
                        jax.tree_util.tree_leaves_with_path(tree, is_leaf=has_shape)}

            got, want = shapes(saved), shapes(abstract_state)
            diffs = [f"{k}: saved {got.get(k, 'absent')}, model {want.get(k, 'absent')}"
                     for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
        except Exception:  # noqa: BLE001 - the metadata is a help, not a requirement
            diffs = []
        listed = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        return (f"step {step} in {manager.directory} does not fit the model this config builds"
                f"{': ' + listed if diffs else ''}. The workdir holds a run of another model "
                f"config: resume it with the config.json beside it, or train in a new workdir. "
                f"(orbax: {str(error).splitlines()[0][:300]})")

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()


def _is_legacy_leaf(x) -> bool:
    return isinstance(x, dict) and set(x) == {"value"} and not isinstance(x["value"], dict)


def _legacy_layout(tree: Any) -> Any:
    """`tree` with each leaf whose parent is a dict moved under {"value": leaf}; optax's
    MaskedNode (a masked-out parameter's empty optimizer state) counts as a leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: {"value": x} if path and isinstance(path[-1], jax.tree_util.DictKey)
        else x, tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _from_legacy_layout(tree: Any) -> Any:
    return jax.tree.map(lambda x: x["value"] if _is_legacy_leaf(x) else x, tree,
                        is_leaf=_is_legacy_leaf)


def _nnx_hwio_layout(tree: Any) -> Any:
    return _legacy_layout(panns.hwio_kernel_shapes(tree))


def _from_nnx_hwio_layout(tree: Any) -> Any:
    return panns.kernels_from_hwio(_from_legacy_layout(tree))


# (name, the saved form of a state's shapes, the conversion of what was restored):
#   - before the train state became plain dicts, every dict leaf sat one level deeper,
#     under "value" (how nnx.State flattened);
#   - before 2026-11-26 the audio encoder's conv kernels (and Adam's moments of them)
#     were HWIO, now OHWI (atjax.encoders.panns.Conv);
#   - and both.
OLDER_LAYOUTS = (
    ("nnx.State leaves under 'value'", _legacy_layout, _from_legacy_layout),
    ("HWIO conv kernels", panns.hwio_kernel_shapes, panns.kernels_from_hwio),
    ("nnx.State leaves and HWIO conv kernels", _nnx_hwio_layout, _from_nnx_hwio_layout),
)


def abstract_like(tree: Any, sharding=None) -> Any:
    """ShapeDtypeStructs (optionally with a sharding) to restore into."""
    def to_struct(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=sharding if sharding is not None else
                                    getattr(x, "sharding", None))
    return jax.tree.map(to_struct, tree)
