import pathlib

import pytest

from atjax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = """
import ml_collections
def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64 if arg != "small" else 2
    c.total_steps = 10
    c.log_every_steps = 1
    c.eval_every_steps = 5
    c.checkpoint_every_steps = 5
    c.rate = 0.5
    c.name = "x"
    c.flag = False
    c.widths = (1, 2)
    c.model = ml_collections.ConfigDict(dict(head="mlp", dim=4))
    return c
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG)
    return path


def test_argument_and_typed_overrides(config_file):
    c = config_lib.load(f"{config_file}:small", ["rate=1", "name=abc", "flag=true",
                                                 "widths=(3, 4)", "model.dim=8"])
    assert c.batch_size == 2
    assert c.rate == 1.0 and isinstance(c.rate, float)
    assert c.name == "abc" and c.flag is True and c.widths == (3, 4) and c.model.dim == 8
    config_lib.check_train_config(c)


@pytest.mark.parametrize("override,named", [("modle.dim=3", "modle"),
                                            ("model.dimm=3", "model.dimm"),
                                            ("batchsize=3", "batchsize")])
def test_unknown_field_is_named(config_file, override, named):
    with pytest.raises(config_lib.ConfigError, match=named):
        config_lib.load(str(config_file), [override])


def test_type_mismatch_is_an_error(config_file):
    with pytest.raises(config_lib.ConfigError, match="batch_size"):
        config_lib.load(str(config_file), ["batch_size=many"])


def test_config_is_locked_against_new_fields(config_file):
    c = config_lib.load(str(config_file))
    with pytest.raises(AttributeError):
        c.new_field = 1


def test_missing_required_training_fields(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import ml_collections\n"
                    "def get_config(arg=None):\n"
                    "    return ml_collections.ConfigDict(dict(seed=0, batch_size=2))\n")
    with pytest.raises(config_lib.ConfigError, match="total_steps"):
        config_lib.check_train_config(config_lib.load(str(path)))


def test_split_config_argv():
    spec, overrides, rest = config_lib.split_config_argv(
        ["--config", "configs/x.py:a", "--config.seed=3", "--config.model.head", "mlp",
         "--workdir", "w"])
    assert spec == "configs/x.py:a"
    assert overrides == ["seed=3", "model.head=mlp"]
    assert rest == ["--workdir", "w"]


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(config_lib.ConfigError, match="get_config"):
        config_lib.load(str(tmp_path / "empty.py"))


@pytest.mark.parametrize("override,match", [
    ("checkpoint_every_steps=0", "checkpoint_every_steps must be an integer >= 1, got 0"),
    ("log_every_steps=-1", "log_every_steps must be an integer >= 1"),
    ("eval_every_steps=-5", "eval_every_steps must be an integer >= 0"),
    ("batch_size=0", "batch_size must be an integer >= 1")])
def test_cadences_the_loop_divides_by_are_checked(config_file, override, match):
    config_lib.check_train_config(config_lib.load(str(config_file), ["eval_every_steps=0"]))
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.check_train_config(config_lib.load(str(config_file), [override]))


@pytest.mark.parametrize("argv,match", [
    (["--workdir", "w", "--config"], "--config needs a value"),
    (["--workdir", "w"], "--config is required"),
    (["--workdir", "w", "--config", "configs/synthetic.py:size=tny"],
     "size must be default or tiny, got 'tny'"),
    (["--workdir", "w", "--config", "configs/synthetic.py:size=tiny",
      "--config.checkpoint_every_steps=0"], "checkpoint_every_steps must be an integer >= 1"),
    (["--workdir", "gs://bucket/run", "--config", "configs/synthetic.py:size=tiny"],
     "is a URL")])
def test_train_cli_names_bad_arguments_without_a_traceback(argv, match, capsys, monkeypatch):
    from atjax import train

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# bad settings: one line naming the setting or path, exit code 2, no traceback

SYNTHETIC = f"{ROOT / 'configs' / 'synthetic.py'}:size=tiny"


def _cli_error(main, argv, capsys) -> str:
    """Runs a CLI's main(argv) in-process; returns its one error line (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def test_a_config_path_that_is_not_python_is_named(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"README\.md is not a Python file"):
        config_lib.load(str(ROOT / "README.md"))
    (tmp_path / "broken.py").write_text("def get_config(arg=None:\n    pass\n")
    with pytest.raises(config_lib.ConfigError, match=r"broken\.py, line 1"):
        config_lib.load(str(tmp_path / "broken.py"))
    # A config file's own check of its argument is a ConfigError too.
    with pytest.raises(config_lib.ConfigError, match="head must be mlp or transformer"):
        config_lib.load(f"{ROOT / 'configs' / 'synthetic.py'}:head=cnn")


@pytest.mark.parametrize("field,value,match", [
    ("embed_dim", 0, "model.embed_dim must be a positive integer, got 0"),
    ("embed_dim", -4, "model.embed_dim must be a positive integer"),
    ("head", "cnn", r"model.head must be one of \['mlp', 'transformer'\], got 'cnn'"),
    ("head_dropout", 1.0, r"model.head_dropout must be in \[0, 1\)"),
    ("temperature", 0.0, "model.temperature must be a positive number"),
    ("chunk_seconds", -0.5, "model.chunk_seconds must be a positive number"),
    ("compute_dtype", "float16", "model.compute_dtype must be one of"),
    ("kernel_overrides.dropout_mask_bits", 8,
     r"model.kernel_overrides: kernel dropout_mask_bits must be 16 or 32"),
    ("kernels", "fastest", r"model.kernels must be one of \('reference', 'fast'\)"),
    ("text.max_length", 0, "model.text.max_length must be a positive integer"),
    ("text.overrides.hidden_size", -8, "model.text.overrides.hidden_size must be"),
    ("audio.network.widths", (4, 0, 8, 16), "model.audio: ResNetConfig.widths must be positive"),
    ("audio.network.embed_dim", 0, "model.audio: ResNetConfig.embed_dim must be positive"),
    ("audio.frontend.n_mels", 0, "model.audio: FrontendConfig.n_mels must be a positive")])
def test_model_sizes_are_checked_before_anything_is_built(field, value, match):
    from atjax import model as model_lib

    config = config_lib.load(SYNTHETIC, [f"model.{field}={value}"])
    with pytest.raises(config_lib.ConfigError, match=match):
        model_lib.check_config(config.model)
    with pytest.raises(config_lib.ConfigError, match=match):
        model_lib.build(config.model)


def test_the_model_check_passes_the_shipped_configs():
    from atjax import model as model_lib

    for arg in ("size=tiny", "head=transformer,batches=order_hard", ""):
        model_lib.check_config(config_lib.load(f"{ROOT / 'configs' / 'synthetic.py'}:{arg}").model)


@pytest.mark.parametrize("override,named", [
    ("model.embed_dim=0", "model.embed_dim must be a positive integer, got 0"),
    ("model.head=cnn", "model.head must be one of"),
    ("optimizer.name=sgd", "optimizer.name must be 'adam' or 'adamw', got 'sgd'"),
    ("data.batches=hard", "config.data.batches='hard'"),
    ("data.sources=synthetic_events", "data.sources: 'synthetic_events' is not 'name:split'"),
    ("data.sources=synthetic:train", "data.sources: unknown dataset 'synthetic'"),
    ("data.sources=synthetic_events:test", "data.sources: synthetic_events has no split 'test'")])
def test_train_cli_refuses_bad_settings_in_one_line(override, named, tmp_path, capsys):
    from atjax import train

    workdir = tmp_path / "run"
    line = _cli_error(train.main, ["--config", SYNTHETIC, f"--config.{override}",
                                   "--workdir", str(workdir), "--no_progress"], capsys)
    assert named in line
    assert not workdir.exists()  # refused before anything was created


def test_train_cli_names_a_config_path_that_is_not_python(tmp_path, capsys):
    from atjax import train

    line = _cli_error(train.main, ["--config", str(ROOT / "README.md"),
                                   "--workdir", str(tmp_path / "run")], capsys)
    assert "README.md is not a Python file" in line


def test_train_cli_names_an_unprepared_dataset(tmp_path, capsys):
    from atjax import train

    line = _cli_error(train.main, ["--config", SYNTHETIC, "--workdir", str(tmp_path / "run"),
                                   f"--config.data.data_dir={tmp_path / 'data'}",
                                   "--config.data.sources=clotho:development"], capsys)
    assert f"clotho at 16000 Hz is not prepared in data.data_dir={tmp_path / 'data'}" in line
    assert "python -m data_pipeline.prepare clotho --manual_dir DIR" in line


def test_train_cli_names_a_workdir_it_cannot_use(tmp_path, capsys):
    from atjax import train

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _cli_error(train.main, ["--config", SYNTHETIC, "--workdir", str(blocker)], capsys)
    assert f"workdir {blocker} is a file" in line
    # Under a regular file no folder can be made: as a read-only parent would refuse it.
    line = _cli_error(train.main, ["--config", SYNTHETIC, "--workdir",
                                   str(blocker / "run")], capsys)
    assert f"workdir {blocker / 'run'} cannot be created" in line


def test_train_cli_names_a_batch_size_the_devices_do_not_divide(tmp_path, capsys,
                                                                monkeypatch):
    import types

    import numpy as np

    from atjax import sharding, train

    # Three devices: the check reads the mesh's device count.
    monkeypatch.setattr(sharding, "make_mesh",
                        lambda *a, **k: types.SimpleNamespace(devices=np.empty(3)))
    line = _cli_error(train.main, ["--config", SYNTHETIC, "--workdir", str(tmp_path / "run"),
                                   "--config.batch_size=8"], capsys)
    assert "batch_size=8 is not divisible by the 3 devices" in line


@pytest.mark.parametrize("argv,named", [
    (["--heads", "mlp,cnn"], "head must be mlp or transformer, got 'cnn'"),
    (["--batches", "random,hard"], "batches must be random or order_hard, got 'hard'"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--steps", "-1"], "--steps must be >= 0")])
def test_ordering_study_refuses_bad_arguments_in_one_line(argv, named, tmp_path, capsys):
    from atjax import ordering_study

    out = tmp_path / "study"
    line = _cli_error(ordering_study.main,
                      ["--size", "tiny", "--out", str(out), "--no_progress", *argv], capsys)
    assert named in line
    assert not out.exists()


def test_ordering_study_names_an_out_folder_it_cannot_make(tmp_path, capsys):
    from atjax import ordering_study

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out, named in [(blocker, f"--out {blocker} is a file"),
                       (blocker / "study", f"--out {blocker / 'study'} cannot be created")]:
        line = _cli_error(ordering_study.main, ["--size", "tiny", "--out", str(out)], capsys)
        assert named in line


# ------------------------------------------------------------------------------------------
# configs/paper.py


PAPER = str(ROOT / "configs" / "paper.py")


def test_paper_config_resnet_shrinks_field_by_field():
    import dataclasses

    from atjax import model as model_lib
    from atjax.encoders import panns

    config = config_lib.load(PAPER, [
        "--config.model.audio.network.widths=(4,8,8,16)",
        "--config.model.audio.network.blocks=(1,1,1,1)",
        "--config.model.audio.network.stem_width=4",
        "--config.model.audio.network.embed_dim=32",
        "--config.model.audio.network.spec_augment=False",
        "--config.model.audio.network.pooled_dropout=0.1"])
    got = model_lib.audio_config(config.model)
    assert (got.widths, got.blocks, got.stem_width, got.embed_dim) == ((4, 8, 8, 16),
                                                                       (1, 1, 1, 1), 4, 32)
    assert got.spec_augment is False and got.pooled_dropout == 0.1
    assert got.block_dropout == panns.ResNetConfig().block_dropout  # untouched: ResNet38's
    # Every field the ResNet family has (but the frontend, which model.audio holds
    # itself) can be overridden alone.
    fields = {f.name for f in dataclasses.fields(panns.ResNetConfig)}
    assert set(config.model.audio.network) == fields - {"frontend"}
    # Unchanged, it is the paper's ResNet38; the blocks follow another architecture.
    plain = config_lib.load(PAPER)
    assert model_lib.audio_config(plain.model) == panns.resnet38(frontend=got.frontend)
    resnet22 = config_lib.load(PAPER, ["--config.model.audio.arch=resnet22"])
    assert model_lib.audio_config(resnet22.model).blocks == (2, 2, 2, 2)
    resnet54 = config_lib.load(PAPER, ["--config.model.audio.arch=resnet54",
                                       "--config.model.audio.network.widths=(4,8,8,16)"])
    got54 = model_lib.audio_config(resnet54.model)
    assert got54.block == "bottleneck" and got54.widths == (4, 8, 8, 16)


def test_synthetic_config_network_is_unchanged():
    from atjax import model as model_lib

    for arg, widths, stem, embed, dropout in (("size=tiny", (4, 8, 8, 16), 4, 32, 0.1),
                                              ("", (16, 32, 64, 128), 8, 128, 0.0)):
        spec = str(ROOT / "configs" / "synthetic.py") + (f":{arg}" if arg else "")
        got = model_lib.audio_config(config_lib.load(spec).model)
        assert (got.blocks, got.widths, got.stem_width, got.embed_dim) == ((1, 1, 1, 1), widths,
                                                                          stem, embed)
        assert (got.spec_augment, got.feature_dropout, got.block_dropout, got.pooled_dropout,
                got.embedding_dropout, got.block) == (False, dropout, 0.0, dropout, dropout,
                                                      "basic")


def test_the_paper_baseline_is_one_experiment():
    names = ("table1-roberta-large", "table2-original", "table5-mlp-original", "baseline", "")
    configs = [config_lib.load(PAPER + (f":{n}" if n else "")) for n in names]
    assert {c.experiment for c in configs} == {"baseline"}
    assert len({c.to_json() for c in configs}) == 1
    # The other experiments keep their names and differ.
    others = ("table1-bert-base", "table2-nv", "table5-transformer-original",
              "table5-mlp-acba")
    assert [config_lib.load(f"{PAPER}:{n}").experiment for n in others] == list(others)
