"""Every random number generator a rank uses, in one place: seeding them (`seed_all`) and their states
as a checkpoint holds them (`capture_rng` / `restore_rng`, weights_only-safe types).

The streams: Python's `random`, NumPy's legacy global generator, torch's CPU generator, every CUDA
device's, and the rank's own augmentation generator (dropout's and the colour noise's numbers on the
device). RunState seeds the global ones from the run's seed, so every rank builds the same model, and
the augmentation generator from (seed, rank), so ranks draw different noise.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int, generator: torch.Generator | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


def capture_rng(augment_generator: torch.Generator | None = None) -> dict:
    """Every RNG state one rank uses, in weights_only-safe types."""
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "augment": augment_generator.get_state() if augment_generator is not None else None,
    }
    return state


def restore_rng(state: dict, augment_generator: torch.Generator | None = None) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if augment_generator is not None and state["augment"] is not None:
        augment_generator.set_state(state["augment"])
