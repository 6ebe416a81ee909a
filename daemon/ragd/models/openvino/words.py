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

    SAVE_ROWS = 1 << 14
    """Rows rounded at a time, so the float temporaries stay small (BGE-M3's whole table: 1 GB each)."""

    @staticmethod
    def save(weight: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        table = np.empty(weight.shape, dtype=np.int8)
        scales = np.empty(weight.shape[0], dtype=np.float32)
        for start in range(0, weight.shape[0], WordTable.SAVE_ROWS):
            rows = np.asarray(weight[start:start + WordTable.SAVE_ROWS], dtype=np.float32)
            scale = np.abs(rows).max(axis=1) / np.float32(127.0)
            scale[scale == 0] = 1.0
            table[start:start + len(rows)] = np.clip(np.rint(rows / scale[:, None]), -127, 127)
            scales[start:start + len(rows)] = scale
        np.save(folder / WordTable.FILES[0], table)
        np.save(folder / WordTable.FILES[1], scales)
        return table, scales

    @staticmethod
    def lookup_in(table: np.ndarray, scales: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
        return table[input_ids].astype(np.float32) * scales[input_ids][..., None]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return self.lookup_in(self.table, self.scales, input_ids)
