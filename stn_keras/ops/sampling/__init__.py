"""`grid_sample`, in three parts: the per-axis tap kernels every backend shares (`taps`), the
TensorFlow op and its forward pass (`forward`), and its written-out backward pass (`backward`)."""

from stn_keras.ops.sampling.forward import grid_sample
from stn_keras.ops.sampling.taps import INTERPOLATIONS, KERNELS, axis_taps, flat_indices

__all__ = ["INTERPOLATIONS", "KERNELS", "axis_taps", "flat_indices", "grid_sample"]
