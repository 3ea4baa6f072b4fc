"""The bundled model and Fashion-MNIST data, and loading of user data files.

The bundled files live in ``gwq_tvm/models`` and are checked against the
sha256 sums in ``MANIFEST.json`` before use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import CalibrationDataError, GwqError

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The bundled models (``gwq_tvm/models/<name>.onnx``), the default first.
BUNDLED_MODELS = ("fmnist_resnet", "fmnist_mobilenetv3")
BUNDLED_MODEL = MODELS_DIR / f"{BUNDLED_MODELS[0]}.onnx"


def manifest() -> dict:
    return json.loads((MODELS_DIR / "MANIFEST.json").read_text())


def _verified(name: str) -> Path:
    path = MODELS_DIR / name
    expected = manifest()["sha256"].get(name)
    if not path.is_file():
        raise GwqError(f"bundled file missing: {path} (reinstall gwq-tvm)")
    if expected != hashlib.sha256(path.read_bytes()).hexdigest():
        raise GwqError(f"bundled file corrupt (sha256 mismatch): {path}")
    return path


def normalise(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``N x 1 x 28 x 28`` pixels to the bundled model's float input."""
    m = manifest()
    return ((images_u8.astype(np.float32) / 255.0 - m["pixel_mean"]) / m["pixel_std"]).astype(np.float32)


def bundled_model(name: str = BUNDLED_MODELS[0]) -> Path:
    """Path of the bundled fp32 ONNX model ``name`` (one of :data:`BUNDLED_MODELS`; checksum verified)."""
    if name not in BUNDLED_MODELS:
        raise GwqError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED_MODELS)}")
    return _verified(f"{name}.onnx")


#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files (the 60k training set).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into a numpy array."""
    import gzip

    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (normalised float32, N x 1 x 28 x 28) and labels.

    ``split="test"``: the bundled 10k test images; ``split="calib"``: 1024 bundled
    training images; ``split="train"``: the 60k training images, read from Debian's
    ``dataset-fashion-mnist`` package (too large to bundle; ``apt-get install
    dataset-fashion-mnist``).
    """
    if split == "train":
        images = DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz"
        labels = DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz"
        if not (images.is_file() and labels.is_file()):
            raise GwqError(
                f"the Fashion-MNIST training set is not installed ({images} missing): apt-get install dataset-fashion-mnist"
            )
        return normalise(read_idx(images).reshape(-1, 1, 28, 28)), read_idx(labels).astype(np.int64)
    name = {"test": "fashion_mnist_test.npz", "calib": "fashion_mnist_calib.npz"}.get(split)
    if name is None:
        raise GwqError(f"unknown split {split!r}; use 'test', 'calib' or 'train'")
    with np.load(_verified(name)) as z:
        return normalise(z["images"]), z["labels"].astype(np.int64)


def _reason(err: BaseException) -> str:
    if isinstance(err, ValueError) and "allow_pickle" in str(err):
        return "it holds Python objects, which gwq-tvm does not unpickle"
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" if str(err).strip() else type(err).__name__


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(inputs, labels or None)`` of an .npy, or of the named members of an .npz (a zip archive)."""
    with open(path, "rb") as f:  # our own handle: numpy leaks its own when an archive is unreadable
        if f.read(2) != b"PK":  # every zip starts so: a member's header, or an empty archive's end record
            f.seek(0)
            return np.load(f, allow_pickle=False), None
        f.seek(0)
        # numpy reads .npz members lazily: a corrupt member (bad CRC, truncated, pickled objects) fails on access here
        with np.load(f, allow_pickle=False) as archive:
            keys = set(archive.files)
            key = next((k for k in ("images", "x", "data", "inputs") if k in keys), None)
            if key is None:
                raise CalibrationDataError(f"{path}: no 'images', 'x', 'data' or 'inputs' array inside")
            lkey = next((k for k in ("labels", "y") if k in keys), None)
            return archive[key], (archive[lkey] if lkey else None)


def load_array_file(path, what: str = "data") -> tuple[np.ndarray, np.ndarray | None]:
    """Read inputs (and labels, if present) from ``.npy`` or ``.npz``.

    An ``.npz`` may hold ``images``/``x``/``data`` (uint8 images are normalised
    like the bundled data only when they come with the bundled model's shape)
    and optionally ``labels``/``y``.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"{what} file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        arr, labels = _read_arrays(path)
    except CalibrationDataError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/numpy/format errors all mean "not a readable array file"
        raise CalibrationDataError(f"{path}: not a readable .npy/.npz array file ({_reason(err)})") from None
    if arr.ndim == 0:
        raise CalibrationDataError(f"{path}: holds a single number (a 0-d array), not a batch of {what}")
    if arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[1:] == (1, 28, 28):
        arr = normalise(arr)
    return arr, labels
