"""The second bundled model: MobileNetV3-Small for 1x28x28 Fashion-MNIST (torch definition).

The layer table is MobileNetV3-Small's (Howard et al., "Searching for
MobileNetV3", ICCV 2019, Table 2): a 3x3 hardswish stem, eleven inverted
residual blocks (3x3/5x5 depthwise, ReLU or hardswish, squeeze-excitation
with a hardsigmoid gate on the blocks the table marks), a 1x1 576-channel
hardswish conv, global average pooling and a 1024-wide hardswish head
without batch norm.  Only what 28x28 inputs force is changed: the first
block keeps stride 1 (total stride 16 instead of 32, so the last feature map
is 2x2 rather than 1x1), the input has one channel, and the classifier has 10
classes.  Dropout before the classifier is kept (it is
dropped at inference: the ONNX export carries it as the identity in eval
mode).
"""

import torch
from torch import nn

from .fmnist_resnet import PIXEL_MEAN, PIXEL_STD  # noqa: F401  (same normalisation as the ResNet)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down (the paper's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    """``x * hardsigmoid(W2 relu(W1 gap(x)))`` with the squeeze width ``make_divisible(C/4)``."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.relu(self.fc1(s))))


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int, groups: int, act) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand 1x1 → depthwise kxk → (SE) → project 1x1, with a residual when shapes allow."""

    def __init__(self, c_in: int, k: int, c_exp: int, c_out: int, se: bool, act, stride: int, se_module=SqueezeExcite):
        super().__init__()
        layers = []
        if c_exp != c_in:
            layers.append(conv_bn_act(c_in, c_exp, 1, 1, 1, act))
        layers.append(conv_bn_act(c_exp, c_exp, k, stride, c_exp, act))
        if se:
            layers.append(se_module(c_exp))
        layers.append(conv_bn_act(c_exp, c_out, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


RE, HS = nn.ReLU, nn.Hardswish

#: MobileNetV3-Small, Table 2: (kernel, expansion, out, SE, activation, stride); the first stride is 1 here.
SMALL_BLOCKS = (
    (3, 16, 16, True, RE, 1),
    (3, 72, 24, False, RE, 2),
    (3, 88, 24, False, RE, 1),
    (5, 96, 40, True, HS, 2),
    (5, 240, 40, True, HS, 1),
    (5, 240, 40, True, HS, 1),
    (5, 120, 48, True, HS, 1),
    (5, 144, 48, True, HS, 1),
    (5, 288, 96, True, HS, 2),
    (5, 576, 96, True, HS, 1),
    (5, 576, 96, True, HS, 1),
)


class FMNISTMobileNetV3(nn.Module):
    """MobileNetV3-Small (width 1.0) for 1x28x28 inputs, 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, blocks=SMALL_BLOCKS, head: int = 1024):
        super().__init__()
        c = 16
        layers = [conv_bn_act(in_channels, c, 3, 2, 1, HS)]
        for k, exp, out, se, act, stride in blocks:
            layers.append(InvertedResidual(c, k, exp, out, se, act, stride))
            c = out
        last = blocks[-1][1]
        layers.append(conv_bn_act(c, last, 1, 1, 1, HS))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
