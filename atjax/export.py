"""`python -m atjax.export --workdir DIR --out BUNDLE`: an inference bundle of a training run.

The bundle (atjax.bundle) holds the run's best checkpoint (else its latest), its config and
the text encoder's tokenizer, and loads with `atjax.load(BUNDLE)` without the run's folders.
"""

# The arguments are checked before jax and the model are imported, which takes seconds:
# --help and a mistyped path are answered at once. The library names that code imports
# from here (export, load, MARKER, ...) live in atjax.bundle and are handed out on first use.

from __future__ import annotations

import argparse
import pathlib
import sys

from atjax import console

# Names of atjax.bundle that are importable from here too.
_BUNDLE_NAMES = ("BUNDLE_FORMAT", "MARKER", "export", "load", "read_config")


def __getattr__(name: str):
    if name in _BUNDLE_NAMES:
        from atjax import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_workdir(workdir) -> None:
    """Raises ValueError for a URL and FileNotFoundError unless `workdir` is a training
    workdir (a folder with config.json)."""
    if "://" in str(workdir):
        from atjax import checkpoint as ckpt_lib  # its refusal says what to use instead

        ckpt_lib.check_workdir(workdir)
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"training workdir not found: {workdir}")
    if not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training workdir")
    parser.add_argument("--out", required=True, help="bundle folder to create")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    # What the arguments name is checked first, as python -m atjax.train does.
    try:
        check_workdir(args.workdir)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if pathlib.Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new bundle folder")
    console.setup(args.verbose)
    from atjax import bundle

    try:
        out = bundle.export(args.workdir, args.out)
    except (OSError, ValueError) as e:  # e.g. no checkpoint yet, a config of another model
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
