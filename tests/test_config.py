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
