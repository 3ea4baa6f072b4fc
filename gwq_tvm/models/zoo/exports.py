"""Graphs shaped like other frameworks' exports, and dense-prediction nets.

* :class:`KerasStyleCNN`: what ``tf2onnx`` writes for a Keras ``Sequential``
  CNN: Conv → ReLU → BatchNormalization (BN *after* the activation, so it
  cannot fold into the conv), ``padding="valid"``, and a flatten in NHWC order
  (Transpose then Reshape) before the Dense layers.
* :class:`PaddleStyleNet`: what ``paddle2onnx`` writes for a PP-LCNet-like
  classifier: dynamic batch and spatial dims, a ``Shape → Gather → Concat →
  Reshape`` flatten, and squeeze-excitation gated by ``HardSigmoid`` with
  Paddle's slope 0.2 / offset 0.5 (see :func:`paddle_hardsigmoid`).
* :class:`TinyYolo`: a YOLOv3-tiny-style backbone and neck (conv-BN-leaky
  ReLU 0.1, max pools, a 1x1 route, nearest 2x upsample, concat with the
  earlier feature map) with its **two** detection heads as two outputs.
* :class:`SmallUNet`: a 3-level U-Net (Ronneberger et al. 2015) with 2x2
  stride-2 transposed convolutions and skip concatenations.
"""

import torch
from torch import nn


def conv_bn(c_in, c_out, k, stride=1, padding=None, act=None, groups=1):
    padding = (k - 1) // 2 if padding is None else padding
    layers = [nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class KerasStyleCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 32, 3), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        )
        side = self.features(torch.zeros(1, in_channels, image, image)).shape[-1]
        self.dense = nn.Sequential(nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Dropout(0.5),
                                   nn.Linear(128, num_classes))

    def forward(self, x):
        f = self.features(x).permute(0, 2, 3, 1)  # Keras flattens channels-last
        return self.dense(f.reshape(f.shape[0], -1))


def paddle_hardsigmoid(x):
    """Paddle's ``hardsigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (torch's uses slope 1/6); exported as ONNX
    ``HardSigmoid`` with alpha 0.2 by :func:`gwq_tvm.models.zoo.export_onnx` (``paddle_hardsigmoid`` fixup)."""
    return nn.functional.hardsigmoid(x)  # traced as HardSigmoid; the alpha/beta are rewritten after export


class PaddleSE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * paddle_hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class PaddleStyleNet(nn.Module):
    """PP-LCNet-like: depthwise-separable hardswish blocks, SE in the last two, 1x1 head conv."""

    CFG = ((3, 16, 32, 1, False), (3, 32, 64, 2, False), (3, 64, 64, 1, False), (3, 64, 128, 2, False),
           (5, 128, 128, 1, False), (5, 128, 256, 2, True), (5, 256, 256, 1, True))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [conv_bn(3, 16, 3, 2, act=nn.Hardswish())]
        for k, c_in, c_out, s, se in self.CFG:
            layers.append(conv_bn(c_in, c_in, k, s, act=nn.Hardswish(), groups=c_in))
            if se:
                layers.append(PaddleSE(c_in))
            layers.append(conv_bn(c_in, c_out, 1, act=nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(256, 1280, 1), nn.Hardswish(), nn.Dropout(0.2))
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        h = self.head(nn.functional.adaptive_avg_pool2d(self.features(x), 1))
        return self.fc(h.reshape(h.shape[0], -1))  # exported as Shape → Gather → Concat → Reshape


class TinyYolo(nn.Module):
    """YOLOv3-tiny backbone and neck (darknet cfg ``yolov3-tiny``), two heads of ``3 * (5 + classes)`` maps."""

    def __init__(self, num_classes: int = 20):
        super().__init__()
        lk = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        widths = (16, 32, 64, 128, 256)
        layers, c = [], 3
        for w in widths:
            layers += [conv_bn(c, w, 3, act=lk()), nn.MaxPool2d(2, 2)]
            c = w
        self.to_route = nn.Sequential(*layers[:-1])  # stride 16, 256 channels (route source)
        self.down = nn.Sequential(layers[-1], conv_bn(256, 512, 3, act=lk()), nn.ZeroPad2d((0, 1, 0, 1)),
                                  nn.MaxPool2d(2, 1), conv_bn(512, 1024, 3, act=lk()), conv_bn(1024, 256, 1, act=lk()))
        out = 3 * (5 + num_classes)
        self.head1 = nn.Sequential(conv_bn(256, 512, 3, act=lk()), nn.Conv2d(512, out, 1))
        self.lateral = conv_bn(256, 128, 1, act=lk())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head2 = nn.Sequential(conv_bn(384, 256, 3, act=lk()), nn.Conv2d(256, out, 1))

    def forward(self, x):
        route = self.to_route(x)
        deep = self.down(route)
        y1 = self.head1(deep)
        y2 = self.head2(torch.cat((self.up(self.lateral(deep)), route), 1))
        return y1, y2


class SmallUNet(nn.Module):
    """Three-level U-Net: (conv-BN-ReLU)x2 per level, max-pool down, 2x2 transposed-conv up, skip concat."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        dc = lambda a, b: nn.Sequential(conv_bn(a, b, 3, act=nn.ReLU()), conv_bn(b, b, 3, act=nn.ReLU()))  # noqa: E731
        w = width
        self.e1, self.e2, self.e3 = dc(3, w), dc(w, 2 * w), dc(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), dc(4 * w, 2 * w)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), dc(2 * w, w)
        self.out = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(self.pool(a))
        c = self.e3(self.pool(b))
        b2 = self.d2(torch.cat((self.u2(c), b), 1))
        return self.out(self.d1(torch.cat((self.u1(b2), a), 1)))
