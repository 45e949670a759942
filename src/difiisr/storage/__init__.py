"""Where files and objects live, and how they are written without ever being half-written.

- ``atomic``: local files written atomically (temp file, then rename) and the clean-up of temp files that
  interrupted writers left behind;
- ``overlap``: refuse an output folder that overlaps an input folder;
- ``uri``: locations (a local folder or ``s3://bucket/prefix``) and the overlap guard between them;
- ``s3``: S3 objects through boto3 (endpoint and credentials from ``AWS_*``), with retries and clear errors;
- ``store``: one interface over both (list keys lazily, fetch, atomic put with metadata);
- ``selection``: which keys a job takes (glob, extensions, ``--shard i/N`` by key hash).

Only the local-file helpers are imported here (``difiisr.io`` uses them); import the other modules by name.
"""

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
