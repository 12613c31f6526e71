"""mnist_20000p_20e: a 19,519-parameter MNIST network exported by budgetnas.

Trial 32 of study 'mnist-20000p-20e', retrained on the full training set with seeds [0, 1, 2]; weights of seed 0, the median seed: representative of the architecture, not its luckiest run.

Measured: mean test accuracy 99.62%, min 99.60%, per seed [99.62, 99.64, 99.60], final epoch of 20, budget 20,000 parameters.
Receptive field 18x18, 2,492,692 multiply-accumulates per image. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_20000p_20e import load
    net = load()              # weights from mnist_20000p_20e.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 19519
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 12, 'padding': 0, 'bias': True, 'dropout': 0.09591996011301723},
        {'type': 'conv', 'in': 12, 'out': 25, 'padding': 0, 'bias': True, 'dropout': 0.09591996011301723},
        {'type': 'maxpool'},
        {'type': 'separable', 'in': 25, 'out': 74, 'padding': 0, 'bias': True, 'dropout': 0.09591996011301723},
        {'type': 'separable', 'in': 74, 'out': 74, 'padding': 0, 'bias': True, 'dropout': 0.09591996011301723},
        {'type': 'separable', 'in': 74, 'out': 74, 'padding': 0, 'bias': True, 'dropout': 0.09591996011301723},
        {'type': 'pointwise', 'in': 74, 'out': 16, 'bias': True, 'dropout': 0.0},
    ],
    'head': {'type': 'gap_linear', 'in': 16, 'bias': True, 'dropout': 0.0},
}
METRICS = {'study': 'mnist-20000p-20e',
 'trial': 32,
 'origin': 'sampled',
 'test_accuracy': [99.62, 99.64, 99.6],
 'test_accuracy_mean': 99.62,
 'test_accuracy_min': 99.6,
 'seeds': [0, 1, 2],
 'weights_seed': 0,
 'weights_test_accuracy': 99.62,
 'epochs': 20,
 'budget': 20000,
 'params': 19519,
 'macs': 2492692,
 'val_accuracy': 99.55,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=0, bias=True)
        self.bn1 = nn.BatchNorm2d(12)
        self.drop1 = nn.Dropout(0.09591996011301723)
        self.conv2 = nn.Conv2d(12, 25, 3, padding=0, bias=True)
        self.bn2 = nn.BatchNorm2d(25)
        self.drop2 = nn.Dropout(0.09591996011301723)
        self.dw4 = nn.Conv2d(25, 25, 3, padding=0, groups=25, bias=True)
        self.pw4 = nn.Conv2d(25, 74, 1, bias=True)
        self.bn4 = nn.BatchNorm2d(74)
        self.drop4 = nn.Dropout(0.09591996011301723)
        self.dw5 = nn.Conv2d(74, 74, 3, padding=0, groups=74, bias=True)
        self.pw5 = nn.Conv2d(74, 74, 1, bias=True)
        self.bn5 = nn.BatchNorm2d(74)
        self.drop5 = nn.Dropout(0.09591996011301723)
        self.dw6 = nn.Conv2d(74, 74, 3, padding=0, groups=74, bias=True)
        self.pw6 = nn.Conv2d(74, 74, 1, bias=True)
        self.bn6 = nn.BatchNorm2d(74)
        self.drop6 = nn.Dropout(0.09591996011301723)
        self.conv7 = nn.Conv2d(74, 16, 1, bias=True)
        self.bn7 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10, bias=True)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.drop1(F.relu(self.bn1(self.conv1(x))))  # 1x28x28 -> 12x26x26, RF 3
        x = self.drop2(F.relu(self.bn2(self.conv2(x))))  # 12x26x26 -> 25x24x24, RF 5
        x = F.max_pool2d(x, 2)  # 25x24x24 -> 25x12x12, RF 6
        x = self.drop4(F.relu(self.bn4(self.pw4(self.dw4(x)))))  # 25x12x12 -> 74x10x10, RF 10
        x = self.drop5(F.relu(self.bn5(self.pw5(self.dw5(x)))))  # 74x10x10 -> 74x8x8, RF 14
        x = self.drop6(F.relu(self.bn6(self.pw6(self.dw6(x)))))  # 74x8x8 -> 74x6x6, RF 18
        x = F.relu(self.bn7(self.conv7(x)))  # 74x6x6 -> 16x6x6, RF 18
        x = self.gap(x).flatten(1)
        x = self.head(x)  # -> 10
        return x.flatten(1)


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    weights = Path(__file__).with_suffix(".pt")
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}: this module was exported untrained")
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
