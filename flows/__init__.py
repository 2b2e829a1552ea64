"""Prefect flows over selftrain's stages."""
