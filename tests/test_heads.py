import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atjax import heads


def test_transformer_head_ignores_padded_positions():
    head = heads.TransformerHead(16, 8, rngs=nnx.Rngs(0))
    head.eval()
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    y = head(x, mask)
    y_changed = head(x.at[0, 3:].set(50.0), mask)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_changed), atol=1e-6)
    # ... but an unmasked position does change the output.
    assert np.abs(np.asarray(head(x.at[0, 1].set(50.0), mask) - y)).max() > 1e-3


def test_transformer_head_depends_on_order():
    """Positional encoding: the same chunks in another order give another embedding,
    which temporal pooling (the MLP baseline) cannot do by construction."""
    head = heads.TransformerHead(16, 8, rngs=nnx.Rngs(0))
    head.eval()
    x = jax.random.normal(jax.random.key(2), (1, 4, 16))
    y = head(x)
    y_rev = head(x[:, ::-1])
    assert np.abs(np.asarray(y - y_rev)).max() > 1e-3


def test_transformer_head_structure_matches_the_paper():
    head = heads.TransformerHead(2048, 1024, rngs=nnx.Rngs(0))
    assert len(head.layers) == 2
    assert head.layers[0].attention.num_heads == 2
    assert head(jnp.ones((3, 10, 2048))).shape == (3, 1024)


def test_dropout_only_in_training():
    head = heads.MLPHead(8, 4, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = jnp.ones((2, 8))
    head.eval()
    np.testing.assert_array_equal(np.asarray(head(x)), np.asarray(head(x)))
    head.train()
    assert np.abs(np.asarray(head(x) - head(x))).max() > 0


def test_unknown_head_is_named():
    with pytest.raises(ValueError, match="attention_pool"):
        heads.make_head("attention_pool", 4, 4, rngs=nnx.Rngs(0))


def test_audio_padding_chunks_are_masked_like_pad_tokens():
    """A short clip zero-padded to the training length gives the embedding it gives alone:
    the Transformer head skips chunks of exact zeros, as the text side skips pad tokens."""
    import pathlib

    from atjax import config as config_lib
    from atjax import model as model_lib

    root = pathlib.Path(__file__).resolve().parents[1]
    config = config_lib.load(f"{root}/configs/synthetic.py:size=tiny,head=transformer")
    model = model_lib.build(config.model)
    model.eval()
    chunk = model.chunk_samples
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, 2 * chunk + chunk // 3))).astype(np.float32)
    alone = model.encode_audio(jnp.asarray(audio))  # its last chunk is partly padding
    padded = model.encode_audio(jnp.asarray(np.pad(audio, ((0, 0), (0, 3 * chunk)))))
    np.testing.assert_allclose(np.asarray(padded), np.asarray(alone), atol=1e-5)
    # Audible chunks all count: changing the partial last one changes the embedding.
    audio[:, 2 * chunk + 1] += 0.5
    assert np.abs(np.asarray(model.encode_audio(jnp.asarray(audio)) - alone)).max() > 1e-4
