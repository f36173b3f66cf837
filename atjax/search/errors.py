"""What the search application raises for an index that cannot be used as asked."""


class AudioIndexError(ValueError):
    """An index folder that cannot be used as asked; the message names it."""


class ModelMismatchError(AudioIndexError):
    """The model given is not the one whose embeddings the index holds."""


class IndexBusyError(RuntimeError):
    """Another process is writing the index."""
