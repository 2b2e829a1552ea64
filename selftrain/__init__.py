"""selftrain: iterative self-training of image classifiers (the ML core; no Prefect or Kubernetes here)."""

__version__ = "0.1.0"
