"""The search: training engine, Optuna trials, confirmation, results and the CLI."""
