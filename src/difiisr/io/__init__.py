"""Image files (PNG, TIFF, JPEG; 8/16-bit; grey or RGB) and their tensor form ``(B,3,H,W)`` in [-1,1]."""

from difiisr.io.errors import ImageReadError
from difiisr.io.image import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    LoadedImage,
    list_images,
    read_image,
    write_image,
)
from difiisr.io.tensor import image_to_tensor, tensor_to_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "LoadedImage",
    "image_to_tensor",
    "list_images",
    "read_image",
    "tensor_to_image",
    "write_image",
]
