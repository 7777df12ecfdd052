"""``make demo``: the end-to-end job on data kunet generates itself."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run(workdir: Path) -> None:
    from kunet.model import UNet

    workdir.mkdir(parents=True, exist_ok=True)
    model = UNet()
    print(f"paper U-Net: {model.count_params():,} parameters")
    tile = np.random.default_rng(0).random((1, 572, 572, 1), dtype=np.float32)
    start = time.perf_counter()
    logits = model(tile, training=False)
    print(f"572x572 tile -> {tuple(logits.shape)} logits in {time.perf_counter() - start:.2f} s")
