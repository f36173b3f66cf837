"""ESC-50 (Piczak 2015): 2,000 five-second clips, 50 classes, 5 folds."""

from data_pipeline.esc50.builder import CLASSES, Esc50

__all__ = ["CLASSES", "Esc50"]
