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
    """Contenders `torch-nchw` and `torch-cl` (channels_last, `channels_last_3d` for volumes: NCDHW
    and NDHWC); none when torch is not installed."""
    if torch is None:
        return {}
    if contenders.THREADS:
        torch.set_num_threads(contenders.THREADS)
    size = (case.batch, case.channels, *case.out_size)

    def channels_first(array):
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1)))

    nchw = channels_first(inputs["images"])
    theta = torch.from_numpy(inputs["theta"])
    upstream = channels_first(inputs["upstream"])
    last = torch.channels_last_3d if case.is_volume else torch.channels_last
    layouts = {
        "torch-nchw": (nchw, upstream),
        "torch-cl": (nchw.contiguous(memory_format=last), upstream.contiguous(memory_format=last)),
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

            return Contender(run, to_numpy=lambda out: np.moveaxis(out.numpy(), 1, -1))
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
