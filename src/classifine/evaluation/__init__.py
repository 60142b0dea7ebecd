"""Reports, comparisons and model cards, all built from a run's predictions."""
