"""The GPU image has no TensorFlow: the model, loss, train step, trainer, export, benchmark,
the evaluation (language probes and the ACBA recipe and synthetic corpus they use) and the
paper's configs must import (and load) without it."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import atjax.model, atjax.loss, atjax.train_step, atjax.trainer, atjax.export
import atjax.inference, atjax.evaluate, atjax.probes.order, atjax.metrics
import atjax.evaluate.language_probes, atjax.probes.text, atjax.text_edits
import data_pipeline.acba, data_pipeline.synthetic_events.corpus
import atjax.bench.train_step, atjax.bench.flops, atjax.bench.profile
from atjax import config
root = sys.argv[1]  # the repository, wherever the tests run from
config.load(f"{root}/configs/paper.py:table5-transformer-acba")
config.load(f"{root}/configs/synthetic.py:head=transformer,batches=order_hard")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
assert not loaded, loaded
print("ok")
"""


def test_training_stack_imports_without_tensorflow():
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("ok")
