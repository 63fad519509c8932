"""A test-made Inception weights file in torch-fidelity's real on-disk format (the real one cannot be downloaded here).

torch-fidelity's own ``FeatureExtractorInceptionV3``, built with its weight loading switched off, He-initialised so
that different images give different features, and its state_dict saved where ``eval.inception_weights`` /
``make_extractor("torch-fidelity", path)`` expects a file.

The stand-ins for the Inception network, one per need:
- this file: the real torch-fidelity architecture and loading path (test_features, test_eval's end-to-end test);
  slow on a CPU (a 299x299 InceptionV3).
- ``diffrop.paper.smoke.write_smoke_extractor``: a tiny random TorchScript net in fid-helper's format, fast; the
  SMOKE reproduction presets ship it, and tests that only need *some* features file use it too.
- test_features.py's ``_InputProbe``: a TorchScript net that reports its input, to check fid-helper's preprocessing.
- test_eval.py's ``FakeExtractor``: an in-process object with known features and logits, to check scores exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch import nn


def write_fidelity_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a random state_dict of torch-fidelity's TF-FID InceptionV3 to ``path`` and return the path."""
    cls = tf_inception.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(cls, "load_state_dict", lambda self, state_dict: None)
        torch.manual_seed(seed)
        net = cls("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
