"""AudioCaps (Kim et al. 2019): captions for 10 s AudioSet segments from YouTube."""

from data_pipeline.audiocaps.builder import AudioCaps

__all__ = ["AudioCaps"]
