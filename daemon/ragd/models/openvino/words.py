"""The word-embedding matrix of an int8 model in int8 (symmetric, one scale per row), looked
up outside OpenVINO: compiling a model with quantised activations, OpenVINO's CPU plugin folds
the matrix back to float32 (1 GB for BGE-M3) however it is stored. Kept as two ``.npy`` files
next to the converted model and memory-mapped, only the rows of tokens in use are read; the
lookup is the per-row int8 rounding NNCF applies when the table stays inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class WordTable:
    """The table of a converted model's folder; called with token ids, their float rows."""

    FILES = ("embeddings.npy", "embedding_scales.npy")

    def __init__(self, folder: Path) -> None:
        self.table = np.load(folder / self.FILES[0], mmap_mode="r")
        self.scales = np.load(folder / self.FILES[1])

    @staticmethod
    def save(weight: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(weight, dtype=np.float32)
        scales = np.abs(w).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        table = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
        np.save(folder / WordTable.FILES[0], table)
        np.save(folder / WordTable.FILES[1], scales.astype(np.float32))
        return table, scales.astype(np.float32)

    @staticmethod
    def lookup_in(table: np.ndarray, scales: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
        return table[input_ids].astype(np.float32) * scales[input_ids][..., None]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.lookup_in(self.table, self.scales, input_ids)
