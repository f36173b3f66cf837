"""What a command prints (atjax.console): its own INFO lines and other libraries' warnings,
without the chatter no user can act on; everything with -v."""

import os
import subprocess
import sys

SCRIPT = """
import logging, os, sys
from atjax import console
console.setup(verbose=sys.argv[1] == "1")
logging.getLogger("atjax.trainer").info("own progress line")
logging.getLogger("data_pipeline.sources").info("own data line")
logging.getLogger("absl").info("orbax saved step 4")
logging.getLogger("absl").warning("Variant folder /d/16000hz has no dataset_info.json")
logging.getLogger("absl").warning("`FeatureConnector.dtype` is deprecated. Please change "
                                  "your code to use NumPy with the field np_dtype")
logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
logging.getLogger("tensorflow").warning("a real warning from a library")
print("env", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("TRANSFORMERS_VERBOSITY"))
"""


def _run(verbose: bool) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TRANSFORMERS_VERBOSITY")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, "1" if verbose else "0"],
                            capture_output=True, text=True, env=env, timeout=120, check=True)
    return result.stdout + result.stderr


def test_a_command_shows_its_own_lines_and_warnings_but_not_library_chatter():
    out = _run(verbose=False)
    assert "own progress line" in out and "own data line" in out
    assert "a real warning from a library" in out
    for chatter in ("orbax saved step", "Variant folder", "FeatureConnector.dtype",
                    "Unable to initialize backend"):
        assert chatter not in out, chatter
    assert "env 2 error" in out


def test_verbose_shows_every_librarys_info_lines():
    out = _run(verbose=True)
    for line in ("own progress line", "orbax saved step", "Variant folder",
                 "Unable to initialize backend", "a real warning from a library"):
        assert line in out, line
