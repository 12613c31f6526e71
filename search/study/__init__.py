"""The search: its settings and trial vocabulary (``config``), storages (``storage``), the
sampled space (``sampler``), the rungs (``plan``), one trial (``objective``), workers and
their stop signals (``run``, ``signals``), the up-front cost (``estimate``, ``records``)
and the confirmation on the test set (``confirm``). It may import ``search.engine``,
``search.errors`` and ``space``, never results, own_model, bench or the CLI."""
