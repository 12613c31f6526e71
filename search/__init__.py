"""budgetnas: search tiny MNIST conv nets under a parameter budget, with Optuna.

    cli/        the ``budgetnas`` command; api.py: the same steps for a notebook
    bench/      the benchmarks and the evidence behind the design
    results/    reading results back: tables, exports, the report, the dashboard
    own_model/  your own model: what ``check`` and ``train`` are pointed at
    study/      the search: settings, storage, sampler, plan, trials, workers, confirmation
    engine/     the training engine: data, augmentation, training, memory
    errors.py   UsageError, the one-line error every layer raises

Imports go one way, down this list: cli and api -> bench -> results, own_model ->
study -> engine -> errors and ``space`` (the architecture specs, which import nothing
from here). No module imports a layer above its own (tests/test_layout.py checks it).
"""
