"""S3 credentials of the local stack: random keys generated once into a mode-0600 file, never printed.

The file (``ROOT/credentials.env``) holds ``KEY=VALUE`` lines for ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``. Only ``python -m difiisr.stack env`` prints the values,
as ``export`` lines meant for ``eval``.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from difiisr.stack.errors import StackError
from difiisr.storage.atomic import atomic_path

LOG = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.env"
DEFAULT_REGION = "us-east-1"
_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class Credentials:
    """S3 credentials of the local SeaweedFS (and of every client of it)."""

    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    def __repr__(self) -> str:  # the secret never reaches a log line or a traceback through repr()
        return f"Credentials(access_key={self.access_key!r}, secret_key='***', region={self.region!r})"

    @classmethod
    def generate(cls, region: str = DEFAULT_REGION) -> Credentials:
        """New random credentials (20-character key id, 40-character secret, like AWS's)."""
        return cls(
            access_key="DIFIISR" + secrets.token_hex(7).upper()[:13],
            secret_key=secrets.token_hex(20),
            region=region,
        )

    def as_env(self) -> dict[str, str]:
        """The standard AWS variables for these credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def _write_private(path: Path, creds: Credentials) -> None:
    """Write ``creds`` to ``path`` atomically; the file is mode 0600 before the secret is written to it."""
    body = "# S3 credentials of the local stack (python -m difiisr.stack); generated once, keep private\n"
    body += "".join(f"{k}={v}\n" for k, v in creds.as_env().items())
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())


def load_or_create_credentials(path: Path) -> Credentials:
    """Read the credentials file at ``path``; create it once (mode 0600, random secrets) if it is missing.

    A file readable by group or others is tightened to 0600 (with a warning naming it).
    """
    path = Path(path)
    if not path.exists():
        creds = Credentials.generate()
        _write_private(path, creds)
        LOG.info("generated S3 credentials in %s (mode 0600)", path)
        return creds
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        LOG.warning("%s had mode %o; setting 0600", path, mode)
        os.chmod(path, 0o600)
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    missing = [k for k in _REQUIRED if not values.get(k)]
    if missing:
        raise StackError(f"{path} lacks {', '.join(missing)}: delete the file to generate new credentials")
    return Credentials(
        values["AWS_ACCESS_KEY_ID"],
        values["AWS_SECRET_ACCESS_KEY"],
        values.get("AWS_DEFAULT_REGION", DEFAULT_REGION),
    )
