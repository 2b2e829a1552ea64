"""Prefect tasks around selftrain's stages: thin wrappers, no logic of their own."""
