"""mnist_8000p_15e: a 4,659-parameter MNIST network exported by budgetnas.

Trial 17 of study 'mnist-8000p-15e', retrained on the full training set with seeds [0, 1, 2]; weights of seed 0, the median seed: representative of the architecture, not its luckiest run.

Measured: mean test accuracy 99.49%, min 99.43%, per seed [99.52, 99.52, 99.43], final epoch of 15, budget 8,000 parameters.
Receptive field 20x20, 1,190,960 multiply-accumulates per image. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_8000p_15e import load
    net = load()              # weights from mnist_8000p_15e.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 4659
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 4, 'padding': 1, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'conv', 'in': 4, 'out': 7, 'padding': 1, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'conv', 'in': 7, 'out': 14, 'padding': 1, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'maxpool'},
        {'type': 'separable', 'in': 14, 'out': 28, 'padding': 0, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'separable', 'in': 28, 'out': 28, 'padding': 0, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'separable', 'in': 28, 'out': 28, 'padding': 0, 'bias': True, 'dropout': 0.003599260651020064},
        {'type': 'pointwise', 'in': 28, 'out': 12, 'bias': True, 'dropout': 0.0},
    ],
    'head': {'type': 'conv_gap', 'in': 12, 'bias': True, 'dropout': 0.0},
}
METRICS = {'study': 'mnist-8000p-15e',
 'trial': 17,
 'origin': 'sampled',
 'test_accuracy': [99.52, 99.52, 99.43],
 'test_accuracy_mean': 99.49,
 'test_accuracy_min': 99.43,
 'seeds': [0, 1, 2],
 'weights_seed': 0,
 'weights_test_accuracy': 99.52,
 'epochs': 15,
 'budget': 8000,
 'params': 4659,
 'macs': 1190960,
 'val_accuracy': 99.5,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop1 = nn.Dropout(0.003599260651020064)
        self.conv2 = nn.Conv2d(4, 7, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(7)
        self.drop2 = nn.Dropout(0.003599260651020064)
        self.conv3 = nn.Conv2d(7, 14, 3, padding=1, bias=True)
        self.bn3 = nn.BatchNorm2d(14)
        self.drop3 = nn.Dropout(0.003599260651020064)
        self.dw5 = nn.Conv2d(14, 14, 3, padding=0, groups=14, bias=True)
        self.pw5 = nn.Conv2d(14, 28, 1, bias=True)
        self.bn5 = nn.BatchNorm2d(28)
        self.drop5 = nn.Dropout(0.003599260651020064)
        self.dw6 = nn.Conv2d(28, 28, 3, padding=0, groups=28, bias=True)
        self.pw6 = nn.Conv2d(28, 28, 1, bias=True)
        self.bn6 = nn.BatchNorm2d(28)
        self.drop6 = nn.Dropout(0.003599260651020064)
        self.dw7 = nn.Conv2d(28, 28, 3, padding=0, groups=28, bias=True)
        self.pw7 = nn.Conv2d(28, 28, 1, bias=True)
        self.bn7 = nn.BatchNorm2d(28)
        self.drop7 = nn.Dropout(0.003599260651020064)
        self.conv8 = nn.Conv2d(28, 12, 1, bias=True)
        self.bn8 = nn.BatchNorm2d(12)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(12, 10, 1, bias=True)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.drop1(F.relu(self.bn1(self.conv1(x))))  # 1x28x28 -> 4x28x28, RF 3
        x = self.drop2(F.relu(self.bn2(self.conv2(x))))  # 4x28x28 -> 7x28x28, RF 5
        x = self.drop3(F.relu(self.bn3(self.conv3(x))))  # 7x28x28 -> 14x28x28, RF 7
        x = F.max_pool2d(x, 2)  # 14x28x28 -> 14x14x14, RF 8
        x = self.drop5(F.relu(self.bn5(self.pw5(self.dw5(x)))))  # 14x14x14 -> 28x12x12, RF 12
        x = self.drop6(F.relu(self.bn6(self.pw6(self.dw6(x)))))  # 28x12x12 -> 28x10x10, RF 16
        x = self.drop7(F.relu(self.bn7(self.pw7(self.dw7(x)))))  # 28x10x10 -> 28x8x8, RF 20
        x = F.relu(self.bn8(self.conv8(x)))  # 28x8x8 -> 12x8x8, RF 20
        x = self.gap(self.head(x))  # -> 10x1x1
        return x.flatten(1)


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    weights = Path(__file__).with_suffix(".pt")
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}: this module was exported untrained")
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
