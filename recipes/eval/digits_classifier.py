"""A judge for generated digits: a classifier trained on the REAL train-split digits only.

    clf = default_classifier(32)                 # cached; fit in well under a second
    clf.heldout_accuracy                         # on the real test split, through the 32x32 rendering
    labels = clf.predict(images)                 # list of PIL images, or an [N,H,W(,3)] / [N,3,H,W] array
    acc = clf.score(images, [parse_caption(c) for c in prompts])

Features: each image goes back to the 8x8 grid on the 0..16 scale (`recipes.data.digits.to_grid`:
luminance, box filter to 8x8, ink = 255 - luminance), so a generated 32x32 image is judged exactly
the way the rendered real digits were; `predict_grids` takes raw 8x8 grids. It judges pixels only:
captions never reach it.

Model: scikit-learn's `KNeighborsClassifier(n_neighbors=3, weights="distance", algorithm="brute")`
(Euclidean) on the rendered-then-downsampled train images. It is deterministic, fits instantly and
reaches ~0.99 on the real test split (logistic regression reached ~0.96 and took seconds; an RBF
SVC ~0.98). `heldout_accuracy` is measured at fit time on the test split rendered at image_size
and read back (the path generated images take); `heldout_accuracy_raw` on the raw 8x8 test grids.

Saving without pickle: a k-nearest-neighbour model's learned state IS its training set, so
`save` writes `train_features` (float32 [N, 64]) and `train_labels` (int64 [N]) to a safetensors
file, with the hyper-parameters and accuracies as string metadata. `load` reads them back and
rebuilds the estimator by calling `KNeighborsClassifier(**same hyper-parameters).fit(features,
labels)`; with the brute-force algorithm `fit` only stores the arrays, so the rebuilt model is the
same model and gives identical predictions. No code is ever unpickled.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from recipes.data.digits import Digits, to_grid

FORMAT = "hart-unified/digit-classifier"
FORMAT_VERSION = "1"


def _as_image_list(images) -> list:
    """PIL images or arrays -> a list of PIL images / (H, W[, 3]) arrays on the 0..255 scale."""
    if isinstance(images, Image.Image):
        raise TypeError("pass a list of images, not one image")
    if hasattr(images, "detach"):  # a torch tensor, e.g. UnifiedModel.generate_image output
        images = images.detach().cpu().float().numpy()
    if isinstance(images, np.ndarray):
        a = images
        if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(0, 2, 3, 1)  # [N, C, H, W] -> [N, H, W, C]
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
            raise ValueError(f"expected images as [N, H, W], [N, H, W, 3] or [N, 3, H, W], got shape {images.shape}")
        if np.issubdtype(a.dtype, np.floating):
            if a.size and (a.min() < -0.01 or a.max() > 1.01):
                raise ValueError(f"float images must be in [0, 1] (got {a.min():.3g}..{a.max():.3g}); pass uint8 "
                                 "for the 0..255 scale")
            a = np.clip(a, 0.0, 1.0) * 255.0
        return list(a)
    return list(images)


class DigitClassifier:
    """k-nearest-neighbour digit classifier on 8x8 grids (see the module docstring)."""

    def __init__(self, n_neighbors: int = 3, weights: str = "distance"):
        self.n_neighbors, self.weights = int(n_neighbors), str(weights)
        self.estimator = None
        self.image_size: int | None = None
        self.seed: int | None = None
        self.heldout_accuracy: float | None = None
        self.heldout_accuracy_raw: float | None = None
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    @staticmethod
    def features(images) -> np.ndarray:
        """Images (see `predict`) -> [N, 64] float32 grids on the 0..16 scale."""
        grids = [to_grid(x).ravel() for x in _as_image_list(images)]
        return np.stack(grids).astype(np.float32) if grids else np.zeros((0, 64), np.float32)

    def _build(self, features: np.ndarray, labels: np.ndarray) -> DigitClassifier:
        from sklearn.neighbors import KNeighborsClassifier

        self._features = np.ascontiguousarray(features, dtype=np.float32)
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.estimator = KNeighborsClassifier(n_neighbors=self.n_neighbors, weights=self.weights,
                                              algorithm="brute", metric="euclidean")
        self.estimator.fit(self._features, self._labels)
        return self

    def fit(self, digits: Digits) -> DigitClassifier:
        """Fit on the train split rendered at digits.image_size and read back to 8x8; measure the
        held-out accuracies on the test split (rendered, and raw)."""
        self._build(self.features(digits.train.images()), digits.train.labels)
        self.image_size, self.seed = digits.image_size, digits.seed
        self.heldout_accuracy = self.score(digits.test.images(), digits.test.labels)
        self.heldout_accuracy_raw = float(np.mean(self.predict_grids(digits.test.grids) == digits.test.labels))
        return self

    def _check_fitted(self) -> None:
        if self.estimator is None:
            raise RuntimeError("DigitClassifier is not fitted: call fit(Digits(...)) or DigitClassifier.load(path)")

    def predict_grids(self, grids: np.ndarray) -> np.ndarray:
        """[N, 8, 8] or [N, 64] grids on the 0..16 scale -> int64 labels."""
        self._check_fitted()
        x = np.asarray(grids, dtype=np.float32).reshape(-1, 64)
        if len(x) == 0:
            return np.zeros(0, np.int64)
        return self.estimator.predict(x).astype(np.int64)

    def predict(self, images) -> np.ndarray:
        """Images -> int64 labels 0..9. Images: a list of PIL images (any size and mode) or of
        (H, W[, 3]) arrays, or one array [N, H, W], [N, H, W, 3] or [N, 3, H, W] (a torch tensor
        works too); uint8 means 0..255, floats must be in [0, 1]. Expected look: a dark digit on a
        light background, as `recipes.data.digits.render` draws them."""
        return self.predict_grids(self.features(images))

    def score(self, images, labels) -> float:
        """Accuracy of `predict(images)` against `labels`."""
        labels = np.asarray(labels, dtype=np.int64)
        pred = self.predict(images)
        if len(pred) != len(labels):
            raise ValueError(f"{len(pred)} images but {len(labels)} labels")
        return float(np.mean(pred == labels)) if len(labels) else float("nan")

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (no pickle): train_features, train_labels + metadata."""
        from safetensors.numpy import save_file
        from sklearn import __version__ as sklearn_version

        self._check_fitted()
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "estimator": "KNeighborsClassifier",
                "n_neighbors": str(self.n_neighbors), "weights": self.weights, "algorithm": "brute",
                "metric": "euclidean", "sklearn_version": sklearn_version}
        for name in ("image_size", "seed", "heldout_accuracy", "heldout_accuracy_raw"):
            value = getattr(self, name)
            if value is not None:
                meta[name] = repr(value)
        save_file({"train_features": self._features, "train_labels": self._labels}, os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DigitClassifier:
        """Read a file written by `save` and rebuild the estimator from its arrays."""
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} file (format={meta.get('format')!r})")
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
            features, labels = f.get_tensor("train_features"), f.get_tensor("train_labels")
        clf = cls(n_neighbors=int(meta["n_neighbors"]), weights=meta["weights"])
        clf._build(features, labels)
        for name, kind in (("image_size", int), ("seed", int), ("heldout_accuracy", float),
                           ("heldout_accuracy_raw", float)):
            if name in meta:
                setattr(clf, name, kind(meta[name]))
        return clf

    def __repr__(self) -> str:
        n = 0 if self._labels is None else len(self._labels)
        return (f"DigitClassifier(kNN k={self.n_neighbors} {self.weights}, {n} real train digits, image_size="
                f"{self.image_size}, heldout_accuracy={self.heldout_accuracy}, "
                f"heldout_accuracy_raw={self.heldout_accuracy_raw})")


@functools.cache
def default_classifier(image_size: int = 32) -> DigitClassifier:
    """The classifier fit on `Digits(image_size, seed=0)`, built once per process per image_size.
    Shared: do not refit or modify the returned object."""
    return DigitClassifier().fit(Digits(image_size=image_size, seed=0))
