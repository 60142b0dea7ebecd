"""Runs in formats other runtimes load (``classifine export``)."""
