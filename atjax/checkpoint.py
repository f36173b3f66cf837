"""Orbax checkpoints of a training run: resume, best-by-validation, retention.

Layout of a workdir:
  config.json            the resolved experiment config (written once)
  checkpoints/<step>/    periodic: train state + input position (keep the latest N)
  best/<step>/           the best by the validation metric (keep 1), same items
  checkpoints/<step>.damaged/  a damaged step that a resumed run passed over (kept aside)
The input position is saved in the same checkpoint as the state, so a resumed run sees
exactly the examples it would have seen.

Each step directory gets a digest once orbax has finished it: atjax_digest.json, the size
and SHA-256 of every file in it. A restore verifies the digest first, then restores, then
checks that every float leaf is finite; a step that fails any of these is damaged
(CheckpointDamagedError, naming the file or leaves), and `restore_latest` falls back to
the newest intact step. A step without a digest (saved by an older atjax, or stopped
between orbax's finalize and the digest's write) is verified by the restore and the
finiteness check alone, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """Saved weights or state (a PANNs .pth, a Hugging Face folder, a ResNet directory, a
    training step, an export bundle) that do not fit the model being filled: another
    architecture or config. The message lists every offender (`mismatch`)."""


def _listing(items: list[str], limit: int | None) -> str:
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    more = f" ... and {len(items) - limit} more"
    return ", ".join(items[:limit]) + more


def mismatch(source: str, target: str, saved: Mapping[str, Any], wanted: Mapping[str, Any],
             *, problems: Sequence[tuple[str, list[str]]] = (), hint: str = "",
             limit: int | None = 12) -> CheckpointMismatchError | None:
    """The error saying how `saved` (name -> shape) does not fit `wanted` (name -> shape),
    or None if it fits: one line, "SOURCE does not fit TARGET: missing (n): ...; unexpected
    (n): ...; wrong shape (n): NAME saved (..), model (..)", then further `problems`
    (label, names) and `hint`. Each list shows its first `limit` names (None: all)."""
    missing = [key for key in wanted if key not in saved]
    unexpected = sorted(key for key in saved if key not in wanted)
    misshaped = [f"{key} saved {tuple(saved[key])}, model {tuple(shape)}"
                 for key, shape in wanted.items()
                 if key in saved and tuple(saved[key]) != tuple(shape)]
    listed = [(f"{label} ({len(keys)})", keys) for label, keys in (
        ("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped),
        *problems) if keys]
    if not listed:
        return None
    message = f"{source} does not fit {target}: " + "; ".join(
        f"{label}: {_listing(keys, limit)}" for label, keys in listed)
    return CheckpointMismatchError(message + (f". {hint}" if hint else ""))


class CheckpointDamagedError(ValueError):
    """A checkpoint (or export bundle) whose files do not match their digest, that orbax
    cannot read, or that holds non-finite values."""


DIGEST_FILE = "atjax_digest.json"
_DIGEST_FORMAT = 1


def _files(directory: pathlib.Path) -> list[str]:
    """Every file under `directory` but the digest, as sorted relative POSIX paths."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in names:
            path = pathlib.Path(root, name)
            relative = path.relative_to(directory).as_posix()
            if relative != DIGEST_FILE and not relative.startswith(DIGEST_FILE + "."):
                found.append(relative)
    return sorted(found)


def _sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_digest(directory: str | pathlib.Path) -> None:
    """Writes `directory`/atjax_digest.json: the size and SHA-256 of every file in it. Via
    a temporary file and a rename, so that a digest is whole or absent."""
    directory = pathlib.Path(directory)
    files = {name: {"size": (directory / name).stat().st_size,
                    "sha256": _sha256(directory / name)} for name in _files(directory)}
    tmp = directory / (DIGEST_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": _DIGEST_FORMAT, "files": files}, indent=1))
    tmp.replace(directory / DIGEST_FILE)


def _digest_problems(directory: pathlib.Path) -> list[str] | None:
    """What differs from `directory`'s digest (empty: nothing), None without a readable
    digest. Files the digest does not list are not read."""
    try:
        files = json.loads((directory / DIGEST_FILE).read_text())["files"]
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s is unreadable (%s): verified as if there were no digest",
                        directory / DIGEST_FILE, error)
        return None
    problems = []
    for name, size, sha256 in entries:
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, its digest says {size}")
        elif _sha256(path) != sha256:
            problems.append(f"{name} does not match its SHA-256 digest")
    return problems


def _listed(problems: list[str]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more files"
                                      if len(problems) > 3 else "")


def verify_digest(directory: str | pathlib.Path) -> bool:
    """True when every file that `directory`'s digest lists is there with its size and
    SHA-256; False when there is no readable digest. Raises CheckpointDamagedError naming
    the files that are missing or differ."""
    directory = pathlib.Path(directory)
    problems = _digest_problems(directory)
    if problems:
        raise CheckpointDamagedError(f"{directory} is damaged: {_listed(problems)}")
    return problems is not None


def _write_digests(directories: list[pathlib.Path]) -> None:
    for directory in directories:
        try:
            write_digest(directory)
        except OSError as error:  # e.g. a full disk, or retention removed the step
            log.warning("could not write the digest of %s (%s): it will be verified "
                            "only by being restored", directory, error)


def non_finite_leaves(tree: Any) -> list[str]:
    """The paths of the float leaves of `tree` that hold a NaN or an infinity."""
    named = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not named:
        return []
    # One reduction per leaf on the devices, where the arrays are (sharded or not): only
    # a flag per leaf comes back to the host.
    finite = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))(
        [x for _, x in named])
    return [name for (name, _), ok in zip(named, np.asarray(jax.device_get(finite))) if not ok]


def _everywhere(ok: bool) -> bool:
    """`ok` of every process, all true: every process restores the same step, even where
    one of them read a damaged file that the others' shards did not need."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def check_workdir(workdir) -> None:
    """A workdir is a file-system path: pathlib would make "gs://b/x" a local folder
    "gs:/b/x" on every host."""
    if "://" in str(workdir):
        raise ValueError(f"workdir {str(workdir)!r} is a URL; atjax writes its workdir through "
                         "the file system: mount the bucket (e.g. gcsfuse) or use a shared "
                         "file system path that every host sees")


class Checkpoints:
    def __init__(self, workdir: str | pathlib.Path, *, keep: int, best_metric: str | None,
                 best_mode: str = "max"):
        workdir = pathlib.Path(workdir).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "input"))
        self._undigested: dict[str, list[int]] = {}  # by manager: steps saved, no digest yet
        self._hashing: threading.Thread | None = None
        self._keep = keep
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

    def _write_digests(self, *names: str, background: bool = False) -> None:
        """Waits for the saves in flight of the managers `names` ("latest", "best"), then
        writes the digest of each step they saved that has none yet (on process 0: the
        step directories are shared). With `background`, on a thread that the next call
        waits for: the training loop goes on while the files are read again."""
        if self._hashing is not None:
            self._hashing.join()
            self._hashing = None
        todo = []
        for name in names:
            manager = getattr(self, name)
            if manager is None:
                continue
            manager.wait_until_finished()
            for step in self._undigested.pop(name, ()):
                directory = pathlib.Path(manager.directory) / str(step)
                # A step that orbax did not finalize, or already removed (retention).
                if jax.process_index() == 0 and directory.is_dir():
                    todo.append(directory)
        if todo and background:
            self._hashing = threading.Thread(target=_write_digests, args=(todo,),
                                             name="atjax-digests", daemon=True)
            self._hashing.start()
        elif todo:
            _write_digests(todo)

    def save(self, step: int, state: Any, input_state: dict | None, *, force: bool = False):
        # orbax's save waits for the previous one anyway; that step's digest is written
        # meanwhile, unless this save's retention may remove it (keep=1).
        self._write_digests("latest", background=self._keep > 1)
        if self.latest.save(step, args=self._args(state, input_state), force=force):
            self._undigested.setdefault("latest", []).append(step)

    def save_best(self, step: int, state: Any, input_state: dict | None,
                  metrics: dict[str, float]) -> None:
        if self.best is None or self.best_metric not in metrics:
            return
        if step in self.best.all_steps():
            # Written by an interrupted run that a resumed one has caught up with: the same
            # step of a deterministic run is the same state.
            return
        self._write_digests("best")
        if self.best.save(step, args=self._args(state, input_state), metrics=metrics):
            self._undigested.setdefault("best", []).append(step)

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
        """Returns (state, input_state) with the shardings of `abstract_state`.

        Raises CheckpointDamagedError if the step's files do not match its digest, orbax
        cannot read it, or it holds non-finite values; CheckpointMismatchError if it is
        readable but its saved shapes differ from `abstract_state`'s (another model)."""
        manager = self.best if best else self.latest
        where = f"step {step} in {manager.directory}"
        directory = pathlib.Path(manager.directory) / str(step)
        failure = None
        try:
            # The digest first: a damaged file must neither reach orbax (whose errors on
            # one would read as another model's checkpoint) nor be restored as values.
            if directory.is_dir() and not _files(directory):
                raise CheckpointDamagedError(f"{where} is damaged: its directory is empty")
            problems = _digest_problems(directory)
            if problems:
                raise CheckpointDamagedError(f"{where} is damaged: {_listed(problems)}")
            state, input_state = self._read(manager, step, abstract_state, where)
        except CheckpointDamagedError as error:
            failure = error
        # Agreed before the finiteness check, a computation that every process joins.
        if not _everywhere(failure is None):
            raise failure or CheckpointDamagedError(
                f"{where} is damaged: another process could not restore it")
        bad = non_finite_leaves(state)
        if bad:
            raise CheckpointDamagedError(
                f"{where} is damaged: non-finite values in {len(bad)} leaves: "
                + ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""))
        if problems is None:
            log.warning("%s carries no digest (saved by an older atjax, or stopped before "
                            "its digest was written): it is verified only by being restored, "
                            "with finite values", where)
        log.info("restored step %d from %s", step, manager.directory)
        return state, input_state

    def _read(self, manager, step: int, abstract_state: Any, where: str):
        def attempt(target):
            return manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), input=ocp.args.JsonRestore()))

        # A checkpoint that cannot be restored into this state is of another model when
        # its metadata says which leaves differ; otherwise orbax could not read it: it is
        # damaged.
        try:
            restored = attempt(abstract_state)
            state = restored.state
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            saved = self._saved_shapes(manager, step)
            misfit = saved and mismatch(
                where, "the model this config builds", saved, shapes(abstract_state),
                hint="The workdir holds a run of another model config: resume it with the "
                     "config.json beside it, or train in a new workdir. (orbax: "
                     f"{str(error).splitlines()[0][:300]})")
            if misfit:
                raise misfit from None
            root = error  # tensorstore's own error says which file and how
            while root.__cause__ is not None:
                root = root.__cause__
            detail = (str(root).splitlines() or [""])[0][:300]
            raise CheckpointDamagedError(f"{where} is damaged: orbax cannot read it "
                                         f"({type(root).__name__}: {detail})") from None
        input_state = restored.input
        if input_state is not None and not isinstance(input_state, dict):
            raise CheckpointDamagedError(f"{where} is damaged: its input position is "
                                         f"{type(input_state).__name__}, not an object")
        return state, dict(input_state or {})

    def restore_latest(self, abstract_state: Any):
        """(step, state, input_state) of the newest intact step of checkpoints/, None if
        there is none at all. Each newer damaged step gets a warning naming the damage;
        with no intact step, CheckpointDamagedError names every damaged one."""
        damaged = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                state, input_state = self.restore(step, abstract_state)
            except CheckpointDamagedError as error:
                log.warning("%s; trying the step before it", error)
                damaged.append(str(error))
                continue
            if damaged:
                log.warning("restored step %d of %s, the newest intact one; %d newer "
                                "steps are damaged", step, self.latest.directory, len(damaged))
            return step, state, input_state
        if damaged:
            raise CheckpointDamagedError(
                f"no intact checkpoint in {self.latest.directory}, nothing restored: "
                + " | ".join(damaged) + ". Restore the files from a copy, or move the "
                "step directories away to train from scratch")
        return None

    def set_aside_after(self, step: int) -> list[pathlib.Path]:
        """Renames the steps of checkpoints/ after `step` (the damaged ones that
        `restore_latest` passed over) to <step>.damaged, which orbax does not count: the
        resumed run writes those steps again, and the damaged files stay for inspection.
        A collective across processes; returns the new paths."""
        later = [s for s in self.latest.all_steps() if s > step]
        moved = []
        root = pathlib.Path(self.latest.directory)
        for s in later:
            target = root / f"{s}.damaged"
            n = 1
            while target.exists():
                target, n = root / f"{s}.damaged-{n}", n + 1
            moved.append(target)
            if jax.process_index() == 0:
                (root / str(s)).rename(target)
                log.warning("moved damaged step %d to %s (delete it to free the space)",
                                s, target)
        if later:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("atjax_set_aside_damaged_steps")
            self.latest.reload()
        return moved

    @staticmethod
    def _saved_shapes(manager, step: int) -> dict[str, tuple]:
        """Each saved leaf's shape by path, as far as the checkpoint's metadata says
        (empty when it says nothing: then nothing says it is another model)."""
        try:
            saved = manager.item_metadata(step)["state"]
            return shapes(getattr(saved, "tree", saved))
        except Exception:  # noqa: BLE001 - unreadable metadata names no leaves
            return {}

    def wait(self) -> None:
        """Waits for the saves in flight and writes their digests."""
        self._write_digests("latest", "best")

    def close(self) -> None:
        self._write_digests("latest", "best")
        self.latest.close()
        if self.best is not None:
            self.best.close()


def shapes(tree: Any) -> dict[str, tuple]:
    """Each leaf's shape by path ("params/audio_encoder/fc1/kernel"), a dataclass's fields
    and a dict's keys alike."""
    def name(key):
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
    return {"/".join(name(k) for k in path): tuple(x.shape) for path, x in
            jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))}


def abstract_like(tree: Any, sharding=None) -> Any:
    """ShapeDtypeStructs (optionally with a sharding) to restore into."""
    def to_struct(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=sharding if sharding is not None else
                                    getattr(x, "sharding", None))
    return jax.tree.map(to_struct, tree)
