"""PyTorch's native `F.affine_grid` + `F.grid_sample` on CPU, in NCHW and channels_last layouts."""

import numpy as np

from benchmarks import contenders
from benchmarks.contenders import Contender

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is the optional `bench` extra
    torch = None


def available():
    return torch is not None


def build(case, inputs, task):
    """Contenders `torch-nchw` and `torch-cl` (channels_last); none when torch is not installed."""
    if torch is None:
        return {}
    if contenders.THREADS:
        torch.set_num_threads(contenders.THREADS)
    size = (case.batch, case.channels, case.out_height, case.out_width)
    nchw = torch.from_numpy(np.ascontiguousarray(inputs["images"].transpose(0, 3, 1, 2)))
    theta = torch.from_numpy(inputs["theta"])
    upstream = torch.from_numpy(np.ascontiguousarray(inputs["upstream"].transpose(0, 3, 1, 2)))
    layouts = {
        "torch-nchw": (nchw, upstream),
        "torch-cl": (
            nchw.contiguous(memory_format=torch.channels_last),
            upstream.contiguous(memory_format=torch.channels_last),
        ),
    }

    def forward(images, theta):
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def make(images, grad_out):
        if task == "forward":

            def run():
                with torch.no_grad():
                    return forward(images, theta)

            return Contender(run, to_numpy=lambda out: out.numpy().transpose(0, 2, 3, 1))
        wants_images = task == "backward_all"

        def run():
            x = images.detach().requires_grad_(wants_images)
            t = theta.detach().requires_grad_(True)
            forward(x, t).backward(grad_out)
            return (x.grad, t.grad) if wants_images else t.grad

        return Contender(run)

    return {name: make(images, grad_out) for name, (images, grad_out) in layouts.items()}


def describe():
    """Version and thread count, for the results' machine section."""
    if torch is None:
        return {"torch": None}
    return {
        "torch": torch.__version__,
        "torch_threads": contenders.THREADS or torch.get_num_threads(),
    }
