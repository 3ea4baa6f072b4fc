"""A ResNet-18 (torchvision layout, no torchvision needed) with seeded random weights, as ONNX.

Used by the kernel benchmark and the slow schedule tests: the graph and the
shapes are ResNet-18's at 224x224; the weights are random (seeded), with
batch-norm statistics randomised so folding is not trivial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _block(nn, cin, cout, stride):
    import torch

    class Basic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    return Basic()


def resnet18(num_classes: int = 1000, seed: int = 0):
    """torch ResNet-18 in eval mode with seeded weights and randomised BN statistics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [_block(nn, cin, cout, stride), _block(nn, cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return model.eval()


def export_onnx(path, seed: int = 0, size: int = 224) -> Path:
    """Write the seeded ResNet-18 as ONNX (dynamic batch) to ``path`` (skipped if it exists)."""
    import torch

    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        x = torch.zeros(1, 3, size, size)
        torch.onnx.export(resnet18(seed=seed), x, str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def calibration_images(n: int = 16, size: int = 224, seed: int = 0) -> np.ndarray:
    """Random normalised 'images' (N, 3, size, size) float32, seeded."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
