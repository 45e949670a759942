"""Local files written atomically, and the clean-up of temp files that interrupted writers left behind."""

from difiisr.storage.atomic import (
    STALE_AFTER_S,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    is_temp_file,
    remove_stale_temp_files,
)

__all__ = [
    "STALE_AFTER_S",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temp_file",
    "remove_stale_temp_files",
]
