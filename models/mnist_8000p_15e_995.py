"""mnist_8000p_15e_995: a 7,039-parameter MNIST network exported by budgetnas.

Trial 1 of study 'mnist-8000p-15e-t99.5', retrained on the full training set with seeds [0, 1, 2]; weights of seed 2, the median seed: representative of the architecture, not its luckiest run.

Measured: mean test accuracy 99.56%, min 99.50%, per seed [99.59, 99.50, 99.58], final epoch of 15, budget 8,000 parameters.
Receptive field 30x30, 1,262,973 multiply-accumulates per image. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_8000p_15e_995 import load
    net = load()              # weights from mnist_8000p_15e_995.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 7039
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 6, 'padding': 0, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'conv', 'in': 6, 'out': 8, 'padding': 0, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'conv', 'in': 8, 'out': 15, 'padding': 0, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'maxpool'},
        {'type': 'separable', 'in': 15, 'out': 33, 'padding': 1, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'separable', 'in': 33, 'out': 33, 'padding': 1, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'separable', 'in': 33, 'out': 33, 'padding': 1, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'maxpool'},
        {'type': 'separable', 'in': 33, 'out': 26, 'padding': 1, 'bias': False, 'dropout': 0.02133803215872967},
        {'type': 'pointwise', 'in': 26, 'out': 16, 'bias': False, 'dropout': 0.0},
    ],
    'head': {'type': 'conv_gap', 'in': 16, 'bias': False, 'dropout': 0.0},
}
METRICS = {'study': 'mnist-8000p-15e-t99.5',
 'trial': 1,
 'origin': 'rescaled from shipped model mnist_4000p_15e (3,580 -> 7,039 params)',
 'test_accuracy': [99.59, 99.5, 99.58],
 'test_accuracy_mean': 99.5567,
 'test_accuracy_min': 99.5,
 'seeds': [0, 1, 2],
 'weights_seed': 2,
 'weights_test_accuracy': 99.58,
 'epochs': 15,
 'budget': 8000,
 'params': 7039,
 'macs': 1262973,
 'val_accuracy': 99.43,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.drop1 = nn.Dropout(0.02133803215872967)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.drop2 = nn.Dropout(0.02133803215872967)
        self.conv3 = nn.Conv2d(8, 15, 3, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(15)
        self.drop3 = nn.Dropout(0.02133803215872967)
        self.dw5 = nn.Conv2d(15, 15, 3, padding=1, groups=15, bias=False)
        self.pw5 = nn.Conv2d(15, 33, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(33)
        self.drop5 = nn.Dropout(0.02133803215872967)
        self.dw6 = nn.Conv2d(33, 33, 3, padding=1, groups=33, bias=False)
        self.pw6 = nn.Conv2d(33, 33, 1, bias=False)
        self.bn6 = nn.BatchNorm2d(33)
        self.drop6 = nn.Dropout(0.02133803215872967)
        self.dw7 = nn.Conv2d(33, 33, 3, padding=1, groups=33, bias=False)
        self.pw7 = nn.Conv2d(33, 33, 1, bias=False)
        self.bn7 = nn.BatchNorm2d(33)
        self.drop7 = nn.Dropout(0.02133803215872967)
        self.dw9 = nn.Conv2d(33, 33, 3, padding=1, groups=33, bias=False)
        self.pw9 = nn.Conv2d(33, 26, 1, bias=False)
        self.bn9 = nn.BatchNorm2d(26)
        self.drop9 = nn.Dropout(0.02133803215872967)
        self.conv10 = nn.Conv2d(26, 16, 1, bias=False)
        self.bn10 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(16, 10, 1, bias=False)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.drop1(F.relu(self.bn1(self.conv1(x))))  # 1x28x28 -> 6x26x26, RF 3
        x = self.drop2(F.relu(self.bn2(self.conv2(x))))  # 6x26x26 -> 8x24x24, RF 5
        x = self.drop3(F.relu(self.bn3(self.conv3(x))))  # 8x24x24 -> 15x22x22, RF 7
        x = F.max_pool2d(x, 2)  # 15x22x22 -> 15x11x11, RF 8
        x = self.drop5(F.relu(self.bn5(self.pw5(self.dw5(x)))))  # 15x11x11 -> 33x11x11, RF 12
        x = self.drop6(F.relu(self.bn6(self.pw6(self.dw6(x)))))  # 33x11x11 -> 33x11x11, RF 16
        x = self.drop7(F.relu(self.bn7(self.pw7(self.dw7(x)))))  # 33x11x11 -> 33x11x11, RF 20
        x = F.max_pool2d(x, 2)  # 33x11x11 -> 33x5x5, RF 22
        x = self.drop9(F.relu(self.bn9(self.pw9(self.dw9(x)))))  # 33x5x5 -> 26x5x5, RF 30
        x = F.relu(self.bn10(self.conv10(x)))  # 26x5x5 -> 16x5x5, RF 30
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
