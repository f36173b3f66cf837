"""A frozen text encoder's features computed once per caption (atjax.text_features): the
same numbers as the encoder's, reused across batches, bounded, and what the trainer feeds
its step when `model.text.feature_cache` is set."""

import json
import pathlib

import numpy as np
import pytest

from atjax import config as config_lib
from atjax import model as model_lib
from atjax import testing
from atjax import text_features
from atjax import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_shared_store(monkeypatch):
    """Each test starts with no features shared from another test's caches."""
    monkeypatch.setattr(text_features, "_SHARED", {})


def _model(*overrides):
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=transformer",
                             list(overrides))
    return config, model_lib.build(config.model, seed=3)


def _tokens(config, texts):
    tokens = model_lib.make_tokenizer(config.model)(texts)
    return np.asarray(tokens["input_ids"]), np.asarray(tokens["attention_mask"])


def test_features_are_the_encoders_eval_output_and_computed_once_per_caption():
    config, model = _model("model.text.freeze=True")
    model.eval()
    texts = ["a dog barks", "rain falls on a tin roof then thunder", "a dog barks", "a bell"]
    ids, mask = _tokens(config, texts)
    expected = np.asarray(model.text_encoder(ids, mask))
    cache = text_features.FeatureCache(model.text_encoder, capacity=10, bucket=3)
    got = cache.features(ids, mask)
    assert got.shape == expected.shape
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert not got[~valid].any()  # padding positions are zeros, never another caption's
    assert (cache.misses, cache.hits, len(cache)) == (3, 1, 3)  # the repeat is reused
    again = cache.features(ids[::-1], mask[::-1])
    np.testing.assert_array_equal(again, got[::-1])
    assert (cache.misses, cache.hits) == (3, 5)


def test_the_cache_keeps_at_most_capacity_captions_least_recently_used_out():
    config, model = _model("model.text.freeze=True")
    cache = text_features.FeatureCache(model.text_encoder, capacity=2, bucket=4)
    for text in ("one", "two", "one", "three"):
        cache.features(*_tokens(config, [text]))
    assert len(cache) == 2
    assert cache.misses == 3  # "one" was reused before "three" pushed "two" out
    cache.features(*_tokens(config, ["one"]))
    assert cache.misses == 3
    cache.features(*_tokens(config, ["two"]))
    assert cache.misses == 4


def test_caches_of_the_same_weights_share_features_and_others_do_not():
    config, model = _model("model.text.freeze=True")
    ids, mask = _tokens(config, ["a dog barks", "a bell"])
    first = text_features.FeatureCache(model.text_encoder, capacity=8, bucket=2)
    features = first.features(ids, mask)
    # A second run's cache of the same frozen weights reuses the first run's features.
    second = text_features.FeatureCache(model_lib.build(config.model, seed=3).text_encoder,
                                        capacity=8, bucket=2)
    np.testing.assert_array_equal(second.features(ids, mask), features)
    assert (second.misses, second.hits) == (0, 2)
    # Other weights (another seed) compute their own.
    other = text_features.FeatureCache(model_lib.build(config.model, seed=4).text_encoder,
                                       capacity=8, bucket=2)
    assert other.digest != first.digest
    assert not np.allclose(other.features(ids, mask), features)
    assert (other.misses, other.hits) == (2, 0)


def test_cached_features_give_the_text_embedding_of_the_eval_model():
    config, model = _model("model.text.freeze=True")
    model.eval()
    ids, mask = _tokens(config, ["a high beep then a low hum", "white noise"])
    cache = text_features.FeatureCache(model.text_encoder, capacity=8, bucket=2)
    batch = cache({"input_ids": ids, "attention_mask": mask, "audio": np.zeros(1)})
    assert "input_ids" not in batch and batch["text_features"].shape[:2] == ids.shape
    np.testing.assert_allclose(
        np.asarray(model.encode_text(None, mask, batch["text_features"])),
        np.asarray(model.encode_text(ids, mask)), rtol=1e-5, atol=1e-5)


def test_features_replace_only_a_frozen_encoder():
    config, model = _model()
    ids, mask = _tokens(config, ["a dog"])
    with pytest.raises(ValueError, match="only when it is frozen"):
        model.encode_text(None, mask, np.zeros(ids.shape + (32,), np.float32))
    with pytest.raises(config_lib.ConfigError, match="feature_cache needs model.text.freeze"):
        model_lib.check_config(config_lib.load(
            f"{ROOT}/configs/synthetic.py:size=tiny", ["model.text.feature_cache=10"]).model)
    with pytest.raises(config_lib.ConfigError, match="feature_cache must be an integer"):
        model_lib.check_config(config_lib.load(
            f"{ROOT}/configs/synthetic.py:size=tiny",
            ["model.text.freeze=True", "model.text.feature_cache=-1"]).model)


def test_a_run_with_the_cache_trains_the_heads_and_leaves_the_encoder(tmp_path, caplog):
    config = config_lib.load(f"{ROOT}/configs/synthetic.py:size=tiny,head=transformer", [
        "total_steps=3", "log_every_steps=1", "eval_every_steps=0",
        "model.text.freeze=True", "model.text.feature_cache=100"])
    captions = ["a dog barks", "a bell rings", "rain falls"]
    trainer = trainer_lib.Trainer(
        config, tmp_path / "run", progress=False,
        input_factory=lambda config, **kw: testing.ArrayInput(captions=captions, **kw))
    def weights(params):
        return (np.array(params["text_encoder"]["layers"][0]["qkv"]["kernel"]),
                np.array(params["text_head"]["input_proj"]["kernel"]))

    text_before, head_before = weights(trainer.state.params)
    with caplog.at_level("INFO", logger="atjax.trainer"):
        result = trainer.train()
    assert result.step == 3
    text_after, head_after = weights(trainer.state.params)
    np.testing.assert_array_equal(text_after, text_before)
    assert not np.allclose(head_after, head_before)
    # Three batches of 8 drawn from three captions: each encoded once.
    assert "text features: 3 distinct captions encoded, 21 reused" in caplog.text
    losses = [json.loads(line)["loss"]
              for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
