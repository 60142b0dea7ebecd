"""LLM-assisted annotation: label data with a larger model, review it, train on it.

``runner.annotate`` (the ``classifine annotate`` entry point), ``annotators`` (an OpenAI-compatible
server or a local causal LM), ``answers`` (server answers to labels and probabilities), ``client``
(HTTP with retries), ``cache`` (SQLite answer cache), ``review`` (agreement, review queue, merging
reviewed labels). The folder format itself is ``core.annotations.AnnotationFolder``.
"""
