"""mnist_20000p_20e: a 16,631-parameter MNIST network exported by budgetnas.

Trial 1 of study 'mnist-20000p-20e', retrained on the full training set with seeds [0, 1, 2]; weights of seed 1, the median seed: representative of the architecture, not its luckiest run.

Measured: mean test accuracy 99.59%, min 99.58%, per seed [99.61, 99.59, 99.58], final epoch of 20, budget 20,000 parameters.
Receptive field 16x16, 1,547,080 multiply-accumulates per image. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_20000p_20e import load
    net = load()              # weights from mnist_20000p_20e.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 16631
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 26, 'padding': 1, 'bias': True, 'dropout': 0.0661565938191812},
        {'type': 'maxpool'},
        {'type': 'separable', 'in': 26, 'out': 73, 'padding': 0, 'bias': True, 'dropout': 0.0661565938191812},
        {'type': 'separable', 'in': 73, 'out': 73, 'padding': 0, 'bias': True, 'dropout': 0.0661565938191812},
        {'type': 'separable', 'in': 73, 'out': 73, 'padding': 0, 'bias': True, 'dropout': 0.0661565938191812},
        {'type': 'pointwise', 'in': 73, 'out': 16, 'bias': True, 'dropout': 0.0},
    ],
    'head': {'type': 'gap_linear', 'in': 16, 'bias': True, 'dropout': 0.0},
}
METRICS = {'study': 'mnist-20000p-20e',
 'trial': 1,
 'test_accuracy': [99.61, 99.59, 99.58],
 'test_accuracy_mean': 99.5933,
 'test_accuracy_min': 99.58,
 'seeds': [0, 1, 2],
 'weights_seed': 1,
 'weights_test_accuracy': 99.59,
 'epochs': 20,
 'budget': 20000,
 'params': 16631,
 'macs': 1547080,
 'val_accuracy': 99.55,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 26, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(26)
        self.drop1 = nn.Dropout(0.0661565938191812)
        self.dw3 = nn.Conv2d(26, 26, 3, padding=0, groups=26, bias=True)
        self.pw3 = nn.Conv2d(26, 73, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(73)
        self.drop3 = nn.Dropout(0.0661565938191812)
        self.dw4 = nn.Conv2d(73, 73, 3, padding=0, groups=73, bias=True)
        self.pw4 = nn.Conv2d(73, 73, 1, bias=True)
        self.bn4 = nn.BatchNorm2d(73)
        self.drop4 = nn.Dropout(0.0661565938191812)
        self.dw5 = nn.Conv2d(73, 73, 3, padding=0, groups=73, bias=True)
        self.pw5 = nn.Conv2d(73, 73, 1, bias=True)
        self.bn5 = nn.BatchNorm2d(73)
        self.drop5 = nn.Dropout(0.0661565938191812)
        self.conv6 = nn.Conv2d(73, 16, 1, bias=True)
        self.bn6 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10, bias=True)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.drop1(F.relu(self.bn1(self.conv1(x))))  # 1x28x28 -> 26x28x28, RF 3
        x = F.max_pool2d(x, 2)  # 26x28x28 -> 26x14x14, RF 4
        x = self.drop3(F.relu(self.bn3(self.pw3(self.dw3(x)))))  # 26x14x14 -> 73x12x12, RF 8
        x = self.drop4(F.relu(self.bn4(self.pw4(self.dw4(x)))))  # 73x12x12 -> 73x10x10, RF 12
        x = self.drop5(F.relu(self.bn5(self.pw5(self.dw5(x)))))  # 73x10x10 -> 73x8x8, RF 16
        x = F.relu(self.bn6(self.conv6(x)))  # 73x8x8 -> 16x8x8, RF 16
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
