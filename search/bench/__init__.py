"""The benchmarks and the evidence behind the design: training speed against a
DataLoader pipeline (``speed``, ``conventional``), the fast training step against the
plain one (``step``), the search against TPE with a median
pruner (``arms``) and which short trainings rank candidates like the full one
(``fidelity``). Only the CLI and ``search.api`` import it; it may import everything
below it (results, own_model, study, engine, errors, space)."""
