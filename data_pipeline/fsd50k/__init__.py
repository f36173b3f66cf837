"""FSD50K (Fonseca et al. 2022): 51,197 Freesound clips labelled with 200 AudioSet classes."""

from data_pipeline.fsd50k.builder import Fsd50k, sentence

__all__ = ["Fsd50k", "sentence"]
