"""atjax: audio-text contrastive learning in JAX/Flax.

`atjax.load(bundle)` returns an inference model with `embed_audio` and `embed_text`.
Heavy imports are deferred so `import atjax` stays cheap.
"""

__version__ = "0.1.0"


def load(path):
    """Loads an export bundle (or a training workdir) for inference. See atjax.bundle."""
    from atjax import bundle

    return bundle.load(path)
