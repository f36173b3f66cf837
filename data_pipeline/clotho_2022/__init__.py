"""The DCASE 2022 task 6B language-based audio retrieval evaluation set ("Clotho 2022")."""

from data_pipeline.clotho_2022.builder import Clotho2022

__all__ = ["Clotho2022"]
