"""Reading results back out of a storage: tables of studies, trials and choices
(``tables``), standalone exports of a trial (``export``), the HTML report (``report``),
the front of confirmed nets across studies (``front``) and optuna-dashboard
(``dashboard``). It may import ``search.study``, ``search.engine``,
``search.errors`` and ``space``; it writes no trials."""
