"""PyTorch's native `F.affine_grid` + `F.grid_sample` on CPU, in NCHW and channels_last layouts; for
the warp, `F.grid_sample` on the base grid plus the displacement field (what a PyTorch registration
model, VoxelMorph's `SpatialTransformer`, does)."""

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

    if task.startswith("warp"):
        layouts = {
            "torch-nchw": (nchw, channels_first(inputs["warp_upstream"])),
            "torch-cl": (
                nchw.contiguous(memory_format=last),
                channels_first(inputs["warp_upstream"]).contiguous(memory_format=last),
            ),
        }
        # Pixel i of n sits at (2 i + 1) / n - 1 (align_corners=False); a pixel is 2 / n.
        sizes = np.array(case.in_size)
        centres = np.stack(np.meshgrid(*(np.arange(n) for n in case.in_size), indexing="ij"), -1)
        base = torch.from_numpy(
            ((2.0 * centres + 1.0) / sizes - 1.0)[..., ::-1].astype("float32").copy()
        )
        scale = torch.from_numpy((2.0 / sizes[::-1]).astype("float32").copy())
        flow_xy = torch.from_numpy(np.ascontiguousarray(inputs["flow"][..., ::-1]))
        theta = flow_xy  # the differentiable parameter of the warp tasks

        def forward(images, flow):
            grid = base + flow * scale
            return F.grid_sample(
                images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
    else:

        def forward(images, theta):
            grid = F.affine_grid(theta, size, align_corners=False)
            return F.grid_sample(
                images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )

    def make(images, grad_out):
        if task in ("forward", "warp_forward"):

            def run():
                with torch.no_grad():
                    return forward(images, theta)

            return Contender(run, to_numpy=lambda out: np.moveaxis(out.numpy(), 1, -1))
        wants_images = task in ("backward_all", "warp_backward")

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
