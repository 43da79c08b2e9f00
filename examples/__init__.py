"""Runnable examples; `python -m examples.distorted_digits` reproduces the README's table."""
