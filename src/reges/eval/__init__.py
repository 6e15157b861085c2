"""Evaluation: metric definitions (`metrics.py`), retrieval baselines (`baselines.py`) and stage `evaluate`.

Modules are imported directly (`from reges.eval.metrics import recall_at_k`); this package imports nothing
on its own.
"""
