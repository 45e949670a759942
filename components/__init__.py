"""Kubeflow components of difiisr: one file per pipeline step, each a lightweight Python component.

A component's body imports ``difiisr`` and calls one step function of ``difiisr.lifecycle``; it only maps that
function's result onto the component's typed outputs (Dataset, Model, Metrics, HTML). The container is the
project image (``difiisr.container.image_ref``): ``CPU_IMAGE`` for steps without a GPU, ``GPU_IMAGE`` for
train, evaluate and batch upscaling. Both are read when this package is imported (that is, when a pipeline is
compiled): ``DIFIISR_IMAGE`` overrides both with one full reference, ``DIFIISR_IMAGE_REGISTRY`` the registry.
The image carries ``kfp``, so no package is pip-installed when a step starts (``install_kfp_package=False``).
"""

from difiisr.container import image_ref

CPU_IMAGE = image_ref("cpu")
GPU_IMAGE = image_ref("cuda")

__all__ = ["CPU_IMAGE", "GPU_IMAGE"]
