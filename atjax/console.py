"""What a command prints: its own progress, and other libraries' lines only when they matter.

Every `python -m` command of atjax calls `setup(verbose)` before it imports TensorFlow or
transformers. By default a user sees atjax's (and data_pipeline's) INFO lines and every
library's warnings and errors, except the chatter that no user can act on: TensorFlow's
C++ start-up lines (and its oneDNN notice), transformers' "PyTorch was not found" notice, JAX's probing for
backends that are not installed, orbax's per-save INFO lines, TFDS's deprecation notices
about its own API and its notes on the half-written folders that it is writing. With `-v`
every library logs at INFO, as it would on its own.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Messages of other libraries about their own internals, dropped unless verbose.
_NOISE = (
    "is deprecated. Please change your code to use NumPy",   # TFDS's FeatureConnector.dtype
    "has no dataset_info.json",      # TFDS scanning a folder that it is still writing
    "has no features.json",
    "has invalid version",           # TFDS's incomplete.* folders while preparing
)

OWN_LOGGERS = ("atjax", "data_pipeline", "launch", "__main__")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _NOISE)


def setup(verbose: bool = False, *, level: int = logging.INFO) -> None:
    """Configures logging and the libraries' own verbosity for a command.

    `level` is what atjax's own loggers show (INFO; WARNING for commands whose output is
    their result, e.g. search). Call it first: the environment settings only take effect
    in libraries imported afterwards.
    """
    root = logging.getLogger()
    if root.handlers:
        # Logging is already set up (a test harness, or a program calling main()): it stays
        # as its owner configured it.
        return
    if verbose:
        logging.basicConfig(level=logging.INFO, format=FORMAT)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow only moves data here; its oneDNN notice (about the rounding of its own
    # matmuls, which atjax does not use) is the one start-up line that level leaves.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # orbax logs each save and restore at INFO through absl; TFDS its notes at WARNING.
    logging.getLogger("absl").setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(_DropNoise())


def add_verbose_flag(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show other libraries' INFO lines (TensorFlow, orbax, JAX)")
