"""Export -> load -> embed round trip, and the exported built-in model driving the search CLIs."""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile

import atjax
from atjax import config as config_lib
from atjax import export as export_lib
from atjax import testing
from atjax import trainer as trainer_lib
from atjax import checkpoint as ckpt_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXTS = ["A high beep before a low hum", "a low hum after a high beep", "rapid knocking"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export") / "run"
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=transformer",
                             ["total_steps=2", "checkpoint_every_steps=2"])
    trainer = trainer_lib.Trainer(config, workdir, progress=False,
                                  input_factory=lambda config, **kw: testing.ArrayInput(**kw))
    trainer.train()
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (48000, 48000, 20000)]
    embedder = trainer.embedder()
    return workdir, audio, embedder.embed_audio(audio), embedder.embed_text(TEXTS)


def test_bundle_round_trip_gives_the_trainers_embeddings(trained, tmp_path):
    workdir, audio, audio_ref, text_ref = trained
    bundle = export_lib.export(workdir, tmp_path / "bundle")
    for source in (bundle, workdir):
        model = atjax.load(source)
        a = model.embed_audio(audio, model.sample_rate)
        t = model.embed_text(TEXTS)
        np.testing.assert_allclose(a, audio_ref, atol=1e-5)
        np.testing.assert_allclose(t, text_ref, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert model.embed_audio(audio[:1], 32000).shape == (1, model.embed_dim)  # resampled
    with pytest.raises(TypeError, match="got int16"):  # integer PCM is not silently +90 dB
        model.embed_audio([(np.asarray(a) * 32767).astype(np.int16) for a in audio],
                          model.sample_rate)
    with pytest.raises(FileExistsError):
        export_lib.export(workdir, bundle)


def test_bundle_of_a_run_with_the_attention_kernel_runs_on_cpu(trained, tmp_path):
    # A run trained on GPUs with model.kernel_overrides.attention=pallas (CUDA only): its workdir
    # refuses a CPU with a clear error; its bundle takes "auto", the same function.
    workdir, audio, audio_ref, text_ref = trained
    gpu_run = tmp_path / "gpu_run"
    shutil.copytree(workdir, gpu_run)
    config = json.loads((gpu_run / "config.json").read_text())
    config["model"]["kernel_overrides"]["attention"] = "pallas"
    (gpu_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="attention impl='pallas'"):
        atjax.load(gpu_run).embed_text(TEXTS)
    bundle = export_lib.export(gpu_run, tmp_path / "bundle")
    assert json.loads((bundle / "config.json").read_text())["model"]["kernel_overrides"][
        "attention"] == "auto"
    np.testing.assert_allclose(atjax.load(bundle).embed_text(TEXTS), text_ref, atol=1e-5)


def test_bundle_of_another_model_is_refused_by_name(trained, tmp_path):
    workdir, *_ = trained
    bundle = export_lib.export(workdir, tmp_path / "bundle")
    (bundle / "atjax_digest.json").unlink()  # the files change on purpose
    params = ocp.StandardCheckpointer().restore((bundle / "params").absolute())
    params["params"]["log_logit_scale"] = np.zeros(3, np.float32)
    shutil.rmtree(bundle / "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((bundle / "params").absolute(), params)
    checkpointer.wait_until_finished()
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"params does not fit the model of its config.json: wrong shape "
                             r"\(1\): params/log_logit_scale saved \(3,\), model \(\)"):
        atjax.load(bundle)


def test_load_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        atjax.load(tmp_path)


@pytest.mark.slow
def test_export_cli_and_search_clis_with_the_exported_model(trained, tmp_path):
    workdir, *_ = trained
    bundle = tmp_path / "bundle"
    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                              timeout=600, cwd=ROOT)

    r = run("atjax.export", "--workdir", str(workdir), "--out", str(bundle))
    assert r.returncode == 0, r.stderr[-2000:]
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    t = np.arange(16000 * 4) / 16000
    soundfile.write(audio_dir / "beep.wav", 0.3 * np.sin(2 * np.pi * 2900 * t), 16000)
    soundfile.write(audio_dir / "hum.flac", 0.3 * np.sin(2 * np.pi * 180 * t), 16000)
    (audio_dir / "broken.wav").write_bytes(b"RIFF not really a wav file")
    r = run("atjax.index", str(audio_dir), "--model", str(bundle), "--out",
            str(tmp_path / "index"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "broken.wav" in r.stdout + r.stderr
    r = run("atjax.search", str(tmp_path / "index"), "a high beep", "-k", "5", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    hits = json.loads(r.stdout)
    hits = hits["results"] if isinstance(hits, dict) else hits
    assert sorted(pathlib.Path(h["path"]).name for h in hits) == ["beep.wav", "hum.flac"]


def test_export_cli_refuses_what_is_not_a_workdir(tmp_path, capsys):
    for workdir, message in [(tmp_path / "nope", "training workdir not found"),
                             (tmp_path, "is not a training workdir (no config.json)"),
                             ("gs://bucket/run", "is a URL")]:
        with pytest.raises(SystemExit) as exit_info:
            export_lib.main(["--workdir", str(workdir), "--out", str(tmp_path / "bundle")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # A workdir with a config but no checkpoint yet: an error, not a traceback.
    (tmp_path / "run").mkdir()
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny", [])
    (tmp_path / "run" / "config.json").write_text(config.to_json_best_effort())
    assert export_lib.main(["--workdir", str(tmp_path / "run"), "--out",
                            str(tmp_path / "bundle")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "holds no checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "bundle").exists()
    (tmp_path / "bundle").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        export_lib.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert exit_info.value.code == 2 and "exists" in capsys.readouterr().err


def test_export_cli_answers_help_and_argument_errors_without_importing_jax(tmp_path):
    # jax, flax and orbax take seconds to import (a minute on a busy host): --help and a
    # wrong path are answered before any of them is imported.
    heavy = ("jax", "jaxlib", "flax", "orbax", "tensorflow", "transformers")
    for args, code, says in [(["--help"], 0, "--workdir"),
                             (["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "b")],
                              2, "training workdir not found"),
                             (["--workdir", str(tmp_path)], 2, "required: --out")]:
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "atjax.export", *args],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        seconds = time.perf_counter() - start
        assert r.returncode == code and says in r.stdout + r.stderr, r.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "atjax.console" in imported  # importtime did report the imports
        assert not {m for m in imported if m.split(".")[0] in heavy}, args
        assert seconds < 30, (args, seconds)  # normally well under 2 s
