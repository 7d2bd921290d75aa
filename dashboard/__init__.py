"""Shared code of the Streamlit dashboard (``streamlit run app.py``).

``dashboard.core`` holds everything that is not Streamlit (model choices, dataset preparation,
private server folders) and is unit-tested without a browser; ``dashboard.jobs`` runs evaluations
and estimates as jobs in worker processes (owners, quotas, a durable store); ``dashboard.ui`` holds the
Streamlit widgets and caches used by ``app.py`` and ``pages/*.py``. The maths lives in ``clrp``.
"""
