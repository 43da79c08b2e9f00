"""The examples' flag checks: `stn_keras.command_line`, loaded from its file without importing the
`stn_keras` package, whose `__init__` imports TensorFlow (10 s here): the multi-worker launcher
never needs TensorFlow, and a bad flag is reported at once.
"""

import importlib.util
import pathlib
import sys

_NAME = "examples._command_line"
if _NAME not in sys.modules:
    _path = pathlib.Path(__file__).resolve().parents[1] / "stn_keras" / "command_line.py"
    _spec = importlib.util.spec_from_file_location(_NAME, _path)
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])

Parser = sys.modules[_NAME].Parser
integer = sys.modules[_NAME].integer
positive_number = sys.modules[_NAME].positive_number
positive_int = sys.modules[_NAME].positive_int
nonnegative_int = sys.modules[_NAME].nonnegative_int
