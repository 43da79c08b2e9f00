"""Shared checkers used by the test suite (and by users testing their own models)."""
