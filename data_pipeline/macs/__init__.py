"""MACS (Martin-Morato & Mesaros 2021): captions for TAU Urban Acoustic Scenes 2019 clips."""

from data_pipeline.macs.builder import Macs

__all__ = ["Macs"]
