"""Clotho v2.1 (Drossos, Lipping & Virtanen 2020): 15-30 s Freesound clips, 5 captions each."""

from data_pipeline.clotho.builder import Clotho

__all__ = ["Clotho"]
