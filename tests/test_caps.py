"""What the compute caps cost: a capped candidate is rebuilt from its own sampled choices
with the caps lifted, and both versions train again on real MNIST."""

import optuna
from real_mnist import DATA, needs_data

from search.bench.caps import NO_CAP, cap_costs, capped_trials, resampled
from search.study.config import SearchConfig
from search.study.run import run_search
from space import analyse, normalise


@needs_data
def test_capped_trials_are_rebuilt_wider_without_the_caps_and_trained_again(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    # A MACs cap far below what 8k parameters need binds on every candidate.
    config = SearchConfig(
        budget=8000,
        epochs=1,
        trials=4,
        max_macs=400_000,
        pruner="none",
        storage=storage,
        artifacts=str(tmp_path / "artifacts"),
        data_dir=DATA,
        train_subset=256,
        val_size=200,
        epoch_lines=False,
    )
    run_search(config)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    found = capped_trials(study)
    assert found  # every complete trial sat under the cap
    for trial, lifted in found:
        assert (
            normalise(resampled(trial, 8000, 400_000, config.activation_cap))
            == trial.user_attrs["spec"]
        )
        assert analyse(normalise(lifted)).params > trial.user_attrs["params"]
        assert analyse(normalise(lifted)).params <= 8000
        assert lifted == resampled(trial, 8000, NO_CAP, NO_CAP)

    costs = cap_costs([storage], data_dir=DATA)
    assert [(c.study, c.trial) for c in costs] == [(config.study_name, t.number) for t, _ in found]
    for cost in costs:
        assert cost.capped_macs <= 400_000 < cost.lifted_macs
        assert cost.capped_params < cost.lifted_params
        assert 0 <= cost.capped_val <= 100 and 0 <= cost.lifted_val <= 100
        assert cost.capped_epoch_s > 0 and cost.lifted_epoch_s > 0
