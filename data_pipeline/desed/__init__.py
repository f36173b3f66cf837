"""DESED public evaluation set (DCASE task 4): 10 s domestic clips with strong event labels."""

from data_pipeline.desed.builder import CLASSES, Desed

__all__ = ["CLASSES", "Desed"]
