"""The training engine: MNIST as tensors on the device (``data``), batched augmentation
(``augment``), one training under one recipe (``train``), the cheap dropout masks of its
fast step (``dropout``) and the memory a spec needs to train (``memory``). It knows
nothing of Optuna or studies; it may import only ``search.errors`` and ``space``."""
