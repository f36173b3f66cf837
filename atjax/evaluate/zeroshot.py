"""Zero-shot classification (Sec. 2.4; Table 1): ESC-50 and UrbanSound8K.

Each class name becomes the text that is embedded through a prompt template; the default
"{label}" is the label itself, as the paper embeds "ground-truth labels" (a template such
as "The sound of {label}." is a setting, `prompt`). Underscores and dashes turn into
spaces, "dog_bark" -> "dog bark". Each clip is assigned the class whose text is closest
to it. No training happens, so the datasets'
folds only group the clips: macro F1 and accuracy are computed within each fold and then
averaged over folds, as the paper reports. Keys `<dataset>/f1`, `<dataset>/accuracy`, and
per fold `<dataset>/f1_fold<k>`, `<dataset>/accuracy_fold<k>`.
"""

from __future__ import annotations

import re

import ml_collections
import numpy as np

from atjax import metrics
from atjax.evaluate import data as data_lib
from atjax.evaluate import embed

DEFAULT_DATASETS = "esc50:train,urbansound8k:train"
DEFAULT_PROMPT = "{label}"  # the paper's: the class label itself


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.datasets = DEFAULT_DATASETS
    c.prompt = DEFAULT_PROMPT
    c.lowercase_labels = True
    c.batch_size = 32
    c.pad_seconds = 0.0             # > 0: pad clips to multiples of it (see evaluate.embed)
    c.text_batch_size = 256
    c.sample_rate = 0               # rate the data was prepared at; 0 = the model's rate
    return c


def label_text(label: str, prompt: str = DEFAULT_PROMPT, lowercase: bool = True) -> str:
    """"Alarm_bell_ringing" -> "alarm bell ringing" (with "The sound of {label}.": "The
    sound of alarm bell ringing.")."""
    if "{label}" not in prompt:
        raise ValueError(f"the prompt template {prompt!r} has no {{label}} placeholder")
    words = re.sub(r"\s+", " ", re.sub(r"[_-]+", " ", label)).strip()
    if not words:
        raise ValueError(f"class label {label!r} has no words")
    return prompt.replace("{label}", words.lower() if lowercase else words)


def classify(audio: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Index of the closest class sentence for each clip (unit-norm embeddings)."""
    return np.argmax(audio @ class_text.T, axis=1)


def fold_scores(true, pred, folds) -> dict[str, float]:
    """Macro F1 and accuracy per fold and their means over folds."""
    true, pred, folds = np.asarray(true), np.asarray(pred), np.asarray(folds)
    if not (true.ndim == pred.ndim == folds.ndim == 1 and len(true) == len(pred) == len(folds)):
        raise ValueError(f"fold_scores needs one label, prediction and fold per clip, got "
                         f"shapes {true.shape}, {pred.shape} and {folds.shape}")
    if not len(true):
        raise ValueError("fold_scores needs at least one clip")
    out, f1s, accs = {}, [], []
    for fold in np.unique(folds):
        mask = folds == fold
        f1 = metrics.macro_f1(true[mask], pred[mask])
        acc = metrics.accuracy(true[mask], pred[mask])
        out[f"f1_fold{fold}"], out[f"accuracy_fold{fold}"] = f1, acc
        f1s.append(f1)
        accs.append(acc)
    return {"f1": float(np.mean(f1s)), "accuracy": float(np.mean(accs)),
            "folds": len(f1s), **out}


def run(embedder, config, *, data_dir: str, read, **unused) -> dict[str, float]:
    rate = int(config.sample_rate) or int(embedder.sample_rate)
    out: dict[str, float] = {}
    for name, split in data_lib.parse_sources(config.datasets):
        examples = read(name, split, data_dir, rate)
        labels, folds = [], []

        def audio_stream():
            for example in examples:
                if "label" not in example:
                    raise ValueError(f"{name}:{split} has no class labels")
                labels.append(example["label"])
                # A dataset without folds is one fold.
                folds.append(int(example.get("fold", 0)))
                yield example["audio"]

        audio = embed.embed_clips(embedder, audio_stream(), sample_rate=rate,
                                  batch_size=config.batch_size, pad_seconds=config.pad_seconds,
                                  total=data_lib.size_of(examples), desc=f"{name}:{split} audio")
        classes = getattr(examples, "label_names", None) or sorted(set(labels))
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise ValueError(f"{name}:{split}: labels {unknown} are not among its classes")
        sentences = [label_text(c, config.prompt, config.lowercase_labels) for c in classes]
        text = embed.embed_texts(embedder, sentences, batch_size=config.text_batch_size,
                                 desc=f"{name} classes")
        index = {c: i for i, c in enumerate(classes)}
        true = np.array([index[label] for label in labels])
        values = fold_scores(true, classify(audio, text), folds)
        values["clips"] = len(labels)
        values["classes"] = len(classes)
        out.update({f"{name}/{k}": v for k, v in values.items()})
    return out
