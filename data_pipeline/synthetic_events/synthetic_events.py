"""TFDS builder `synthetic_events`: the procedural corpus of `corpus.py`, prepared to disk.

It needs no manual files. One BuilderConfig per corpus: `"{rate}hz"` is the default corpus at
that rate (the same config names as the release builders, so `"synthetic_events/16000hz"`
works like `"clotho/16000hz"`); any other corpus gets `make_builder_config(corpus_config)`,
whose name carries a digest of its settings so two corpora never share a prepared folder:

    builder = SyntheticEvents(config=make_builder_config(CorpusConfig(train_size=500)),
                              data_dir=data_dir)
    builder.download_and_prepare()

Both splits have the same features (TFDS keeps one feature dict per builder); fields that do
not apply to an element are empty: "twin_audio"/"twin_captions" are filled for train pairs,
"twin" for held-out pairs (held-out twins are elements of their own), "preposition" for pairs
and mixes. Audio is int16 PCM stored as raw bytes, like the release builders'.

The default corpus (2,000 train + 560 held-out clips of 3 s at 16 kHz; 327 MB) prepares in
about 22 s on 2 shared CPU cores:  python -m data_pipeline.prepare synthetic_events
--data_dir DIR --sample_rate 16000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import audio
from data_pipeline import builder_base
from data_pipeline.synthetic_events import corpus

_EMPTY_AUDIO = np.zeros([0], np.int16)


@dataclasses.dataclass(eq=False)
class SyntheticEventsConfig(tfds.core.BuilderConfig):
    corpus: corpus.CorpusConfig = dataclasses.field(default_factory=corpus.CorpusConfig)

    @property
    def sample_rate(self) -> int:
        return self.corpus.sample_rate


def _config_name(config: corpus.CorpusConfig) -> str:
    name = f"{config.sample_rate}hz"
    if config == corpus.CorpusConfig(sample_rate=config.sample_rate):
        return name
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return f"{name}_{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def _new_builder_config(config: corpus.CorpusConfig) -> SyntheticEventsConfig:
    defaults = corpus.CorpusConfig(sample_rate=config.sample_rate)
    changed = {k: v for k, v in dataclasses.asdict(config).items()
               if getattr(defaults, k) != v}
    return SyntheticEventsConfig(
        name=_config_name(config),
        description=f"synthetic sound events at {config.sample_rate} Hz"
        + (f", settings changed from the defaults: {changed}" if changed else ""),
        corpus=config,
    )


def make_builder_config(config) -> SyntheticEventsConfig:
    """The BuilderConfig of a corpus (a CorpusConfig or a mapping of its fields)."""
    config = corpus.CorpusConfig.from_mapping(config)
    # TFDS refuses a custom config that shares a predefined config's name; the predefined
    # one is the same corpus (names differ whenever settings do), so hand that out.
    predefined = SyntheticEvents.builder_configs.get(_config_name(config))
    return predefined if predefined is not None else _new_builder_config(config)


class SyntheticEvents(tfds.core.GeneratorBasedBuilder):
    """Procedural sound events with captions that state their order or simultaneity."""

    # Bump whenever generated audio or captions change: prepared data is keyed by version.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 14 classes; singles, ordered pairs, mixes."}
    BUILDER_CONFIGS = [_new_builder_config(corpus.CorpusConfig(sample_rate=rate))
                       for rate in builder_base.PREDEFINED_RATES]
    DEFAULT_CONFIG_NAME = "16000hz"

    @property
    def corpus_config(self) -> corpus.CorpusConfig:
        return self.builder_config.corpus

    def _info(self) -> tfds.core.DatasetInfo:
        sample_rate = self.corpus_config.sample_rate

        def pcm():
            return builder_base.Pcm16Audio(sample_rate, doc=f"mono PCM at {sample_rate} Hz")

        return tfds.core.DatasetInfo(
            builder=self,
            description=corpus.__doc__,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "audio": pcm(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "kind": tfds.features.Text(),
                "preposition": tfds.features.Text(),
                "events": tfds.features.Sequence({
                    "label": tfds.features.Text(),
                    "onset": np.float32,
                    "offset": np.float32,
                }),
                "twin": tfds.features.Text(),
                "twin_audio": pcm(),
                "twin_captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            homepage=None,
            # Stored in index order: a held-out pair is followed by its twin on disk too,
            # and train order is random already (each index draws its own example).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download or read
        config = self.corpus_config
        # TFDS cannot write an empty split; a corpus of size 0 simply lacks that split.
        return {split: self._generate(split) for split in corpus.SPLITS if config.size(split)}

    def _generate_examples(self, **unused):
        # Required by TFDS; unused because _split_generators returns the generators.
        raise NotImplementedError

    def _generate(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        config = self.corpus_config
        for index in range(config.size(split)):
            yield index, _features(corpus.example(split, index, config))


def _features(ex: corpus.Example) -> dict[str, Any]:
    return {
        "id": ex.id,
        "audio": audio.to_pcm16(ex.audio),
        "captions": list(ex.captions),
        "kind": ex.kind,
        "preposition": ex.preposition or "",
        "events": {
            "label": [name for name, _, _ in ex.events],
            "onset": np.asarray([on for _, on, _ in ex.events], np.float32),
            "offset": np.asarray([off for _, _, off in ex.events], np.float32),
        },
        "twin": ex.twin or "",
        "twin_audio": _EMPTY_AUDIO if ex.twin_audio is None else audio.to_pcm16(ex.twin_audio),
        "twin_captions": list(ex.twin_captions or []),
    }
