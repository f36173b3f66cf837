"""UrbanSound8K (Salamon, Jacoby & Bello 2014): 8,732 urban sound excerpts, 10 classes, 10 folds."""

from data_pipeline.urbansound8k.builder import CLASSES, UrbanSound8k

__all__ = ["CLASSES", "UrbanSound8k"]
