"""Evaluation: every way xlm_jax measures a model, behind one interface (evaluator.py)."""
