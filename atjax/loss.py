"""InfoNCE (symmetric cross-entropy over cosine similarities), as CLIP/CLAP use it.

Written on global arrays: inside `jax.jit` with a batch-sharded input, `audio @ text.T`
spans the whole global batch (every device's examples are negatives for every other's)
and XLA inserts the all-gathers. No explicit collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def info_nce(audio: jax.Array, text: jax.Array, logit_scale: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE for paired rows of `audio` and `text` (`[B, D]`, unnormalised).

    `logit_scale` is 1 / temperature. Row i of each side is the positive of row i of the
    other; every other row of the global batch is a negative. Computed in float32
    whatever the compute dtype, since the softmax over B logits is precision-sensitive.
    """
    a = l2_normalize(audio)
    t = l2_normalize(text)
    logits = logit_scale.astype(jnp.float32) * (a @ t.T)
    labels = jnp.arange(logits.shape[0])
    audio_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_audio = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = 0.5 * (audio_to_text + text_to_audio)
    metrics = {
        "loss": loss,
        "loss_audio_to_text": audio_to_text,
        "loss_text_to_audio": text_to_audio,
        # In-batch top-1 accuracy: a cheap training-time signal of retrieval quality.
        "batch_accuracy": 0.5 * (jnp.mean(jnp.argmax(logits, 1) == labels)
                                 + jnp.mean(jnp.argmax(logits, 0) == labels)),
        "temperature": 1.0 / logit_scale,
    }
    return loss, metrics
