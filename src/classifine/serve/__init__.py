"""HTTP serving: the FastAPI app, micro-batching, Prometheus metrics, the vLLM backend."""
