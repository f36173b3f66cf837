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
