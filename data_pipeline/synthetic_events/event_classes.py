"""The sound-event classes of the built-in synthetic corpus: how each is synthesised and
how captions name it.

Each class is a procedural signal (tones, sweeps, shaped noise, knocks, a buzz, pulses, a
siren, beeps, a bell) with small random variation (pitch jitter, phase, timing) drawn from
the generator the corpus hands it, so an event is a pure function of that generator's
state. Numpy only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

# Event randomness. Pitches move by up to a semitone, so a class is a region of the
# spectrum rather than one exact frequency, yet neighbouring classes stay apart in a
# 64-band mel spectrogram at 16 kHz.
_JITTER_SEMITONES = 1.0


def _jitter(rng: np.random.Generator) -> float:
    return 2.0 ** (rng.uniform(-_JITTER_SEMITONES, _JITTER_SEMITONES) / 12.0)


def _seconds(n: int, sample_rate: int) -> np.ndarray:
    return np.arange(n) / sample_rate


def _tone(rng, n, sample_rate, *, hz):
    f = hz * _jitter(rng)
    return np.sin(2 * np.pi * f * _seconds(n, sample_rate) + rng.uniform(0, 2 * np.pi))


def _chirp(rng, n, sample_rate, *, start_hz, stop_hz):
    # Exponential sweep: equal time per octave, so it is a straight line on the mel axis.
    scale = _jitter(rng)
    f0, f1 = start_hz * scale, stop_hz * scale
    duration = n / sample_rate
    k = np.log(f1 / f0) / duration
    t = _seconds(n, sample_rate)
    return np.sin(2 * np.pi * f0 * np.expm1(k * t) / k + rng.uniform(0, 2 * np.pi))


def noise(rng, n, sample_rate, *, exponent, low_hz=0.0, high_hz=None):
    # Shapes white noise in the frequency domain: power ~ 1/f^exponent inside the band.
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    scale = _jitter(rng)
    high = sample_rate / 2 if high_hz is None else min(high_hz * scale, 0.48 * sample_rate)
    gain = np.maximum(f, 20.0) ** (-exponent / 2.0)
    gain[(f < low_hz * scale) | (f > high)] = 0.0
    return np.fft.irfft(spectrum * gain, n)


def _knocks(rng, n, sample_rate, *, rate_hz, knock_hz, decay_seconds):
    # A train of damped low knocks (a woodblock): short resonances repeated in time, narrow
    # in frequency, so in a spectrogram they are a dotted line between the low and mid tones.
    rate = rate_hz * _jitter(rng)
    period = sample_rate / rate
    starts = np.arange(rng.uniform(0, 0.3) * period, n, period)
    starts = np.clip(starts + rng.normal(0, 0.03 * period, starts.shape), 0, n - 1).astype(int)
    length = int(6 * decay_seconds * sample_rate)
    t = _seconds(length, sample_rate)
    knock = np.sin(2 * np.pi * knock_hz * _jitter(rng) * t) * np.exp(-t / decay_seconds)
    out = np.zeros(n + length)
    for s in starts:
        out[s:s + length] += knock
    return out[:n]


def _harmonic(rng, n, sample_rate, *, f0, rolloff, top_hz):
    # A buzz: many harmonics of a low fundamental, falling off as k^-rolloff.
    f = f0 * _jitter(rng)
    t = _seconds(n, sample_rate)
    top = min(top_hz, 0.45 * sample_rate)
    out = np.zeros(n)
    for k in range(1, int(top // f) + 1):
        out += k ** -rolloff * np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi))
    return out


def _am_tone(rng, n, sample_rate, *, hz, rate_hz):
    t = _seconds(n, sample_rate)
    envelope = 0.5 * (1 - np.cos(2 * np.pi * rate_hz * _jitter(rng) * t))
    return envelope * np.sin(2 * np.pi * hz * _jitter(rng) * t + rng.uniform(0, 2 * np.pi))


def _fm_tone(rng, n, sample_rate, *, hz, deviation_hz, rate_hz):
    t = _seconds(n, sample_rate)
    scale = _jitter(rng)
    rate = rate_hz * _jitter(rng)
    lfo_phase = rng.uniform(0, 2 * np.pi)
    # The phase is the integral of f(t) = hz + deviation * sin(2 pi rate t + lfo_phase).
    phase = (hz * t - deviation_hz / (2 * np.pi * rate) * np.cos(2 * np.pi * rate * t + lfo_phase))
    return np.sin(2 * np.pi * scale * phase)


def _beeps(rng, n, sample_rate, *, hz, rate_hz, duty):
    t = _seconds(n, sample_rate)
    rate = rate_hz * _jitter(rng)
    on = (t * rate) % 1.0 < duty
    # Round the gate edges (10 ms Hann) so that each beep does not splash across the spectrum.
    window = np.hanning(max(3, int(0.01 * sample_rate)))
    gate = np.convolve(on.astype(float), window / window.sum(), mode="same")
    return gate * np.sin(2 * np.pi * hz * _jitter(rng) * t)


def _bell(rng, n, sample_rate, *, hz, partials, decay_seconds, strike_seconds):
    # Inharmonic partials that decay after each strike; struck again every strike_seconds.
    f = hz * _jitter(rng)
    t = _seconds(n, sample_rate)
    period = strike_seconds * _jitter(rng)
    since_strike = t % period
    out = np.zeros(n)
    for i, ratio in enumerate(partials):
        decay = decay_seconds / (1 + i)   # higher partials die away sooner, as in real bells
        out += np.exp(-since_strike / decay) * np.sin(2 * np.pi * f * ratio * t) / (1 + i)
    return out


@dataclasses.dataclass(frozen=True)
class EventClass:
    """One kind of sound event: its name, how captions name it, and how to synthesise it.

    `captions` are noun phrases ("a high beep"); `clauses` say the same with a verb ("a high
    beep sounds"), for sentences such as "a bell rings as a siren wails". `render(rng,
    num_samples, sample_rate)` returns the raw signal; the corpus sets level and fades.
    """

    name: str
    captions: tuple[str, ...]
    clauses: tuple[str, ...]
    render: Callable[[np.random.Generator, int, int], np.ndarray]

    @property
    def phrases(self) -> tuple[str, ...]:
        return self.captions + self.clauses


def _event(name, captions, clauses, synth, **params) -> EventClass:
    return EventClass(name, tuple(captions), tuple(clauses), functools.partial(synth, **params))


# Chosen to differ clearly in a 64-band log-mel spectrogram (fmax 8 kHz): three steady pitches
# far apart, two sweeps that differ only in direction (a model must look along time), noises
# in different bands, and patterns over time (knocks, pulses, beeps, strikes, a siren).
CLASSES: tuple[EventClass, ...] = (
    _event("low_tone", ["a low hum", "a low-pitched tone", "a deep drone"],
           ["a low hum drones", "a low-pitched tone sounds", "a deep drone plays"],
           _tone, hz=180.0),
    _event("mid_tone", ["a steady tone", "a mid-pitched tone", "a pure tone"],
           ["a steady tone sounds", "a mid-pitched tone plays", "a pure tone rings"],
           _tone, hz=600.0),
    _event("high_tone", ["a high beep", "a high-pitched tone", "a shrill tone"],
           ["a high beep sounds", "a high-pitched tone rings", "a shrill tone plays"],
           _tone, hz=2900.0),
    _event("rising_chirp", ["a rising whistle", "an upward sweep", "a rising chirp"],
           ["a whistle rises", "a tone sweeps upward", "a rising chirp sounds"],
           _chirp, start_hz=400.0, stop_hz=3200.0),
    _event("falling_chirp", ["a falling whistle", "a downward sweep", "a falling chirp"],
           ["a whistle falls", "a tone sweeps downward", "a falling chirp sounds"],
           _chirp, start_hz=3200.0, stop_hz=400.0),
    _event("white_noise", ["a burst of static", "white noise", "a rush of noise"],
           ["a burst of static sounds", "white noise rushes", "a rush of noise blows"],
           noise, exponent=0.0),
    _event("rumble", ["a low rumble", "a rumbling noise", "a deep rumble"],
           ["a low rumble rolls", "something rumbles", "a deep rumble grows"],
           noise, exponent=1.0, high_hz=300.0),
    _event("hiss", ["a hiss", "a hissing sound", "steam hissing"],
           ["something hisses", "a hissing sound starts", "steam hisses"],
           noise, exponent=0.0, low_hz=4000.0, high_hz=7500.0),
    _event("knocks", ["rapid knocking", "a series of knocks", "tapping"],
           ["someone knocks repeatedly", "a series of knocks sounds", "something taps rapidly"],
           _knocks, rate_hz=8.0, knock_hz=400.0, decay_seconds=0.008),
    _event("buzz", ["a buzz", "an electric buzz", "a buzzing sound"],
           ["something buzzes", "an electric buzz drones", "a buzzer sounds"],
           _harmonic, f0=110.0, rolloff=1.0, top_hz=5000.0),
    _event("pulsing_tone", ["a pulsing tone", "a throbbing tone", "a trembling tone"],
           ["a tone pulses", "a throbbing tone sounds", "a trembling tone plays"],
           _am_tone, hz=1400.0, rate_hz=7.0),
    _event("siren", ["a siren", "a wailing siren", "a warbling tone"],
           ["a siren wails", "a siren sounds", "a warbling tone plays"],
           _fm_tone, hz=850.0, deviation_hz=200.0, rate_hz=3.0),
    _event("beeps", ["repeated beeps", "a beeping alarm", "a series of beeps"],
           ["an alarm beeps", "something beeps repeatedly", "a beeping alarm goes off"],
           _beeps, hz=2000.0, rate_hz=4.0, duty=0.5),
    _event("bell", ["a ringing bell", "a chiming bell", "a bell"],
           ["a bell rings", "a bell chimes", "a small bell rings"],
           _bell, hz=700.0, partials=(1.0, 2.76, 5.40), decay_seconds=0.25,
           strike_seconds=0.45),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)
