"""The built-in synthetic sound-event corpus (`corpus`, numpy only) and its TFDS builder.

`from data_pipeline.synthetic_events import corpus` imports no TensorFlow, so evaluators can
generate the held-out split on machines without it; the builder (`SyntheticEvents`,
`make_builder_config`) is imported, and registered with TFDS, on first use.
"""

_BUILDER_NAMES = ("SyntheticEvents", "SyntheticEventsConfig", "make_builder_config")


def __getattr__(name):
    if name in _BUILDER_NAMES:
        from data_pipeline.synthetic_events import synthetic_events

        return getattr(synthetic_events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
