"""The model and test audio shared by the search-application tests (index, search, serve).

`search_kit` is the ONE place that says which model the tests use. Until the built-in
default model exists it is `BandEnergyEmbedder`, a deterministic stand-in that shares one
embedding space between audio and text: audio -> energies in log-spaced frequency bands,
text -> each known sound word to its own band (other words carry no sound).
`kit.render(word, seconds)` synthesises a tone in the band of `word`, so "siren" finds the
file where the siren tone plays.

Switching to a real model means changing `search_kit` (model, render, index_command).

Run as a script, this module indexes a folder with the stand-in model in a fresh process
(what the crash test kills): python tests/conftest_search.py AUDIO_DIR INDEX [--delay S]
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sys
from typing import Callable

import numpy as np
import pytest

SAMPLE_RATE = 16000
DIM = 32
LOW_HZ, HIGH_HZ = 60.0, 7600.0
# Sound words and their bands, 4 bands apart so that a tone's leakage stays out of the
# neighbours' bands.
WORDS = ("dog", "car", "rain", "bird", "siren", "engine", "bell", "drum")
BANDS = {w: 2 + 4 * i for i, w in enumerate(WORDS)}


def _band(word: str, dim: int) -> int:
    return BANDS[word] % dim


def _edges(dim: int) -> np.ndarray:
    return np.geomspace(LOW_HZ, HIGH_HZ, dim + 1)


class BandEnergyEmbedder:
    """Stand-in for an atjax model (embedder protocol), deterministic and fast.

    `delay` sleeps in each embed_audio call, to make indexing slow enough to kill.
    `twist` permutes the bands: a *different* model with the same shapes.
    """

    chunk_seconds = None

    def __init__(self, dim: int = DIM, sample_rate: int = SAMPLE_RATE, delay: float = 0.0,
                 twist: bool = False):
        self.dim = dim
        self.sample_rate = sample_rate
        self.delay = delay
        self._perm = np.roll(np.arange(dim), 1) if twist else np.arange(dim)

    def embed_audio(self, waveforms, sample_rate: int) -> np.ndarray:
        import time

        from scipy import signal

        waves = np.asarray(waveforms, np.float32)
        if waves.ndim != 2 or waves.shape[1] == 0:
            raise ValueError(f"expected [B, N] waveforms, got {waves.shape}")
        if sample_rate != self.sample_rate:
            waves = signal.resample_poly(waves, self.sample_rate, sample_rate, axis=1)
        if self.delay:
            time.sleep(self.delay)
        power = np.abs(np.fft.rfft(waves, axis=1)) ** 2
        freqs = np.fft.rfftfreq(waves.shape[1], 1.0 / self.sample_rate)
        band = np.searchsorted(_edges(self.dim), freqs, side="right") - 1
        inside = (band >= 0) & (band < self.dim)
        energy = np.zeros((len(waves), self.dim))
        for b in range(self.dim):
            energy[:, b] = power[:, inside & (band == b)].sum(axis=1)
        emb = np.sqrt(energy)[:, self._perm] + 1e-6  # silence -> a fixed, harmless vector
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def embed_text(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"empty text: {text!r}")
            words = re.findall(r"[a-z0-9]+", text.lower())
            for w in words:
                if w in BANDS:
                    out[i, self._perm[_band(w, self.dim)]] += 1.0
            if not out[i].any():  # no sound word: equally close to everything
                out[i] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def render_band(word: str, seconds: float, sample_rate: int = SAMPLE_RATE,
                dim: int = DIM) -> np.ndarray:
    """A tone at the (geometric) centre of `word`'s band, with a little seeded noise."""
    edges = _edges(dim)
    b = _band(word, dim)
    freq = np.sqrt(edges[b] * edges[b + 1])
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    noise = np.random.default_rng(BANDS[word]).standard_normal(len(t))
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.002 * noise).astype(np.float32)



class CountingModel:
    """Wraps a model and counts the windows it is asked to embed."""

    def __init__(self, model):
        self._model = model
        self.windows = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed_audio(self, waveforms, sample_rate):
        self.windows += len(waveforms)
        return self._model.embed_audio(waveforms, sample_rate)


@dataclasses.dataclass
class SearchKit:
    model: object                              # the model under test (embedder protocol)
    other_model: object                        # a different model with the same shapes
    render: Callable[..., np.ndarray]          # (word, seconds, sample_rate) -> waveform
    index_command: Callable[..., list[str]]    # (audio_dir, index_dir, *extra) -> argv:
    # indexes in a fresh process, one file per commit, `--delay S` slowing each model call


@pytest.fixture(scope="session")
def search_kit() -> SearchKit:
    def index_command(audio_dir, index_dir, *extra):
        return [sys.executable, __file__, str(audio_dir), str(index_dir), *extra]

    return SearchKit(BandEnergyEmbedder(), BandEnergyEmbedder(twist=True), render_band,
                     index_command)


@pytest.fixture(scope="module")
def search_server(tmp_path_factory, search_kit):
    """(http server on a free loopback port, files written, searcher) over the collection."""
    import threading

    from atjax.search import indexer as index_lib
    from atjax.search import query as search_lib
    from atjax.search import server as serve

    root = tmp_path_factory.mktemp("serve")
    files = write_collection(root / "audio", search_kit)
    index_lib.build_index(root / "audio", search_kit.model, root / "idx",
                          window_seconds=10.0, hop_seconds=5.0, progress=False)
    # A secret beside the collection that a path traversal would try to reach.
    (root / "secret.txt").write_text("root:x:0:0:secret")
    searcher = search_lib.Searcher(root / "idx", search_kit.model)
    httpd = serve.make_server(searcher, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, files, searcher
    httpd.shutdown()
    httpd.server_close()
    searcher.close()


def write_collection(root: pathlib.Path, kit: SearchKit) -> dict[str, pathlib.Path]:
    """The standard test collection. Returns name -> path of what was written."""
    import soundfile

    sr = kit.model.sample_rate
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    files = {
        "dog": (root / "dog.wav", kit.render("dog", 3.0, sr), sr),
        # Another rate and format: decoding resamples to the model's rate.
        "car": (root / "car.flac", kit.render("car", 4.0, 22050), 22050),
        "rain": (root / "sub" / "rain.wav", kit.render("rain", 12.0, sr), sr),
        # 20 s: bird for 10 s, then siren for 10 s. Windows of 10 s every 5 s start at
        # 0, 5 and 10; only the last is all siren.
        "long": (root / "long.wav", np.concatenate([kit.render("bird", 10.0, sr),
                                                    kit.render("siren", 10.0, sr)]), sr),
        "engine": (root / "sub" / "deeper" / "engine.wav", kit.render("engine", 1.0, sr), sr),
        # A name that is HTML: pages must show it as text.
        "html": (root / "<img src=x onerror=alert(1)> & bell.wav", kit.render("bell", 2.0, sr), sr),
    }
    written = {}
    for name, (path, wave, rate) in files.items():
        soundfile.write(path, wave, rate)
        written[name] = path
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)))
    written["corrupt"] = corrupt
    (root / "notes.txt").write_text("not audio")
    return written


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from atjax.search import indexer as index_lib

    parser = argparse.ArgumentParser()
    parser.add_argument("audio_dir")
    parser.add_argument("index_dir")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--commit-every", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    report = index_lib.build_index(args.audio_dir, BandEnergyEmbedder(delay=args.delay),
                                   args.index_dir, commit_every=args.commit_every,
                                   batch_size=args.batch_size, progress=False)
    print(report.summary())
