"""Hyperparameter tuning: one search-space file (`space.py`), one Optuna study, drivers per
backend (`local.py`: trial processes on this machine; `sagemaker.py`: SageMaker's tuner)."""
