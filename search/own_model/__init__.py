"""Your own model: what ``budgetnas check`` and ``budgetnas train`` are pointed at
(``target``: a reference net, a spec, an export or your own ``nn.Module``) and the
check of what it is made of (``check``). It may import ``search.study``,
``search.engine``, ``search.errors`` and ``space``."""
