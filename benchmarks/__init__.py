"""Benchmarks of stn-keras's sampler against PyTorch, TensorFlow's built-ins and onnxruntime.

Run with `python -m benchmarks.run --out DIR` (see `benchmarks/run.py`); torch is optional (the
`bench` extra) and its columns are left out when it is not importable.
"""
