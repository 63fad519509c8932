"""A stand-in for the Inception network, and ``src/eval.py`` run with it: ``python tests/helpers/eval_fake_extractor.py
<eval overrides>`` is ``python src/eval.py <eval overrides>`` scoring with ``FakeExtractor`` (for subprocess tests).

With ``HOLD_EVAL=1`` the run stops once it holds its eval dir (where it would build the extractor): it prints
``holding <pid>`` and sleeps until killed. With ``START_WHEN=<file>`` it imports its modules, then waits for that file
to exist before it starts: a test can pay two processes' start-up at once and still order what they do.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


class FakeExtractor:
    """Features = a fixed random projection of the pixels (8-d), logits = a projection of those (5 classes)."""

    name, has_logits, weights_path = "fake-pixels", True, None

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj, self.head = torch.randn(3 * 16 * 16, 8, generator=g), torch.randn(8, 5, generator=g)
        self.images_seen = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255).flatten(1) @ self.proj

    def extract(self, images, batch_size=100, progress=True):
        self.images_seen += len(images)
        feats = self.features(images)
        return feats, feats @ self.head


def _build_extractor(kind, weights, device) -> FakeExtractor:
    if os.environ.get("HOLD_EVAL"):
        print(f"holding {os.getpid()}", flush=True)
        time.sleep(600)
    return FakeExtractor()


if __name__ == "__main__":
    from diffrop import build  # noqa: F401  (most of src/eval.py's import time)
    from diffrop.evaluation import reference_set

    reference_set.build_extractor = _build_extractor
    if gate := os.environ.get("START_WHEN"):
        while not Path(gate).exists():
            time.sleep(0.05)
    sys.argv = [str(REPO / "src" / "eval.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
