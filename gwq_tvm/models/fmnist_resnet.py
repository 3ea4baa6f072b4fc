"""The bundled residual CNN for Fashion-MNIST (torch definition).

Nine convolutions, three residual adds, global average pooling and a dense
head; batch norm after every convolution.  The trained checkpoint ships as
``fmnist_resnet.onnx`` (written by ``tools/train_bundled_model.py``); this
module is the torch source of that graph, used by the training script, the
torch frontend tests and quantization-aware training.
"""

import torch
from torch import nn

#: Normalisation applied to raw ``uint8`` Fashion-MNIST pixels before the model.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a (projected when needed) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class FMNISTResNet(nn.Module):
    """ResNet-style classifier for 1x28x28 inputs (widths 16-32-64)."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = BasicBlock(w1, w1, 1)
        self.layer2 = BasicBlock(w1, w2, 2)
        self.layer3 = BasicBlock(w2, w3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
