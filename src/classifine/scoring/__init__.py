"""Metrics (pure numpy), the decision rules tuned on validation, and the per-kind metric facts."""
