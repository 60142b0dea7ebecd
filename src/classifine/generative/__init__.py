"""Causal LMs as classifiers: prompts from the spec, label scoring and constrained decoding, the
answer-only trainer, and the saved format of a generative run."""
