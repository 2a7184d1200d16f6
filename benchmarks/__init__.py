"""keygate benchmarks: the proxy throughput harness (`python -m benchmarks.proxy`) and helpers."""
