"""Local and S3 paths, and atomic writes."""

from difiisr.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
