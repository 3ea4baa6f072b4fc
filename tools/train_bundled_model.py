"""Train a bundled Fashion-MNIST model and write the files gwq-tvm ships.

Reads the IDX files of Debian's ``dataset-fashion-mnist`` package (or
``--idx-dir``), trains the chosen model on the 60k training images on the
CPU, and writes into ``gwq_tvm/models/``:

* ``<model>.onnx``   the trained fp32 model (input ``input``: Nx1x28x28,
  normalised pixels; output ``logits``: Nx10), batch dimension dynamic;
* ``<model>.pt``     its state dict (for QAT and the torch frontend);
* ``fashion_mnist_test.npz``   the 10k test images (uint8) and labels, and
  ``fashion_mnist_calib.npz``  1024 training images (uint8) for calibration
  (written only when missing: every bundled model shares them);
* ``MANIFEST.json``  sha256 of every bundled file and each model's fp32 test
  accuracy (the other models' entries are kept).

Models (``--model``): ``fmnist_resnet`` (:class:`~gwq_tvm.models.fmnist_resnet.FMNISTResNet`,
about 20-30 min on 2 cores, 15 epochs) and ``fmnist_mobilenetv3``
(:class:`~gwq_tvm.models.fmnist_mobilenetv3.FMNISTMobileNetV3`, MobileNetV3-Small).
"""

import argparse
import gzip
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gwq_tvm.models.fmnist_mobilenetv3 import FMNISTMobileNetV3
from gwq_tvm.models.fmnist_resnet import PIXEL_MEAN, PIXEL_STD, FMNISTResNet

#: ``--model`` name -> (constructor, default epochs)
MODELS = {"fmnist_resnet": (FMNISTResNet, 15), "fmnist_mobilenetv3": (FMNISTMobileNetV3, 8)}

OUT_DIR = Path(__file__).resolve().parents[1] / "gwq_tvm" / "models"


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into a numpy array."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    return (images_u8.float().div(255.0) - PIXEL_MEAN) / PIXEL_STD


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts (pad + crop) and horizontal flips."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def evaluate(model, images, labels, batch=1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = model(normalise(images[i : i + batch]))
            correct += (logits.argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--model", choices=sorted(MODELS), default="fmnist_resnet")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's own (15 / 8)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    build, default_epochs = MODELS[args.model]
    args.epochs = args.epochs or default_epochs
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tr_x = torch.from_numpy(read_idx(args.idx_dir / "train-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    tr_y = torch.from_numpy(read_idx(args.idx_dir / "train-labels-idx1-ubyte.gz").astype(np.int64))
    te_x = torch.from_numpy(read_idx(args.idx_dir / "t10k-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    te_y = torch.from_numpy(read_idx(args.idx_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64))

    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(tr_x) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(tr_x), generator=gen)
        t0, total_loss = time.time(), 0.0
        for i in range(0, len(tr_x), args.batch):
            idx = perm[i : i + args.batch]
            x = normalise(augment(tr_x[idx], gen))
            loss = F.cross_entropy(model(x), tr_y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        acc = evaluate(model, te_x, te_y)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total_loss / len(tr_x):.4f} "
            f"test acc {acc * 100:.2f}% ({time.time() - t0:.0f}s)",
            flush=True,
        )

    model.eval()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"{args.model}.pt")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(out / f"{args.model}.onnx"),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    if not (out / "fashion_mnist_test.npz").is_file():
        np.savez_compressed(out / "fashion_mnist_test.npz", images=te_x.numpy(), labels=te_y.numpy())
    if not (out / "fashion_mnist_calib.npz").is_file():
        calib_idx = torch.randperm(len(tr_x), generator=torch.Generator().manual_seed(1))[:1024]
        np.savez_compressed(
            out / "fashion_mnist_calib.npz", images=tr_x[calib_idx].numpy(), labels=tr_y[calib_idx].numpy()
        )
    path = out / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"models": {}, "sha256": {}}
    manifest.update(pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    manifest["models"][args.model] = {"fp32_test_accuracy": evaluate(model, te_x, te_y), "epochs": args.epochs}
    files = [f"{args.model}.onnx", f"{args.model}.pt", "fashion_mnist_test.npz", "fashion_mnist_calib.npz"]
    manifest["sha256"].update({f: sha256(out / f) for f in files})
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
