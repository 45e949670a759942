"""S3 objects through boto3: streaming listing, download, atomic upload with metadata, retries, clear errors.

Endpoint and credentials come from the standard environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or any other source of boto3's default
chain, ``AWS_DEFAULT_REGION`` / ``AWS_REGION``). With a custom endpoint (SeaweedFS, MinIO) path-style addressing
is used.

Failures are sorted into three kinds:

- transient (connection refused/reset/closed, timeouts, HTTP 5xx, 429, ``SlowDown``/throttling codes): retried
  with bounded exponential backoff (``RetryPolicy``); when the attempts are used up, ``StorageUnavailableError``;
- permanent (access denied, bad or missing credentials, no such bucket, any other 4xx): ``StorageAccessError`` at
  once, naming the bucket/key and the fix;
- a missing object: ``ObjectNotFoundError`` (the caller decides: a vanished input fails alone).

Uploads are atomic: a single PUT up to ``multipart_threshold`` bytes, else a multipart upload that becomes visible
only when completed (an interrupted one is aborted, or cleaned later by ``abort_stale_uploads``). The object
metadata travels with the PUT (or the multipart creation), so an object never exists without it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from difiisr.errors import JobError
from difiisr.storage.retry import RetriesExhausted, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1 << 20
#: S3's limit on user metadata (keys + values, bytes).
METADATA_LIMIT = 2048
# every printable ASCII character but '%' stays readable in a metadata value; the rest is percent-encoded
_SAFE_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class StorageError(JobError):
    """A storage operation failed for a reason outside the inputs; the job stops (``ExitCode.JOB_FAILED``)."""


class StorageAccessError(StorageError, PermissionError):
    """A permanent refusal (access denied, bad credentials, no such bucket, bad request): retrying cannot help."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The store kept failing transiently (down, unreachable, throttling) after every retry."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object does not exist (e.g. an input deleted after it was listed)."""


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """One listed or inspected object: ``key`` (full key), ``size`` in bytes, user ``metadata`` (HEAD only)."""

    key: str
    size: int
    metadata: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Client settings. ``endpoint_url`` None = AWS; sizes in bytes, timeouts in seconds."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    retry: RetryPolicy = RetryPolicy()
    multipart_threshold: int = 64 * MIB
    part_size: int = 64 * MIB
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_pool_connections: int = 32
    page_size: int = 1000

    def __post_init__(self) -> None:
        if self.part_size < 5 * MIB:
            raise ValueError(f"part_size={self.part_size}: S3 multipart parts are at least 5 MiB")
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"page_size={self.page_size}: S3 lists 1..1000 keys per page")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> S3Settings:
        """Endpoint and region from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` /
        ``AWS_DEFAULT_REGION`` (credentials are read by boto3 itself); ``overrides`` set other fields."""
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint_url=endpoint, region=region, **overrides)

    @property
    def where(self) -> str:
        """The endpoint in words, for messages."""
        return self.endpoint_url or f"AWS S3 ({self.region})"


def encode_metadata(record: Mapping[str, str]) -> dict[str, str]:
    """User metadata for ``record``: keys as given (lower-case ASCII), values percent-encoded where not printable
    ASCII; ``ValueError`` for a bad key or more than ``METADATA_LIMIT`` bytes in all."""
    out: dict[str, str] = {}
    for key, value in record.items():
        if (
            not key
            or key != key.lower()
            or not key.isascii()
            or not all(c.isalnum() or c in "._-" for c in key)
        ):
            raise ValueError(f"metadata key {key!r}: use lower-case ASCII letters, digits, '.', '_' and '-'")
        out[key] = quote(str(value), safe=_SAFE_VALUE_CHARS)
    size = sum(len(k) + len(v) for k, v in out.items())
    if size > METADATA_LIMIT:
        raise ValueError(f"object metadata of {size} bytes is over S3's limit of {METADATA_LIMIT} bytes")
    return out


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Inverse of ``encode_metadata`` (keys come back lower-cased by the S3 protocol)."""
    return {str(k).lower(): unquote(str(v)) for k, v in metadata.items()}


def _error_code(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ``ClientError``; ('', 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection/timeout failures, HTTP 5xx and 429, throttling codes."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    transient = (
        BotoConnectionError,  # EndpointConnectionError, ConnectionClosedError, timeouts, ...
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
        Urllib3Error,
        ConnectionError,  # builtin: reset, refused, broken pipe
        TimeoutError,
    )
    return isinstance(exc, transient)


class S3Client:
    """A thread-safe wrapper of one boto3 S3 client with the retry and error policy of this module."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings.from_env()
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The underlying boto3 client (created on first use; botocore's own retries off: ours apply)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                s = self.settings
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=s.endpoint_url,
                    region_name=s.region,
                    config=Config(
                        s3={"addressing_style": "path" if s.endpoint_url else "auto"},
                        connect_timeout=s.connect_timeout_s,
                        read_timeout=s.read_timeout_s,
                        max_pool_connections=s.max_pool_connections,
                        retries={"total_max_attempts": 1, "mode": "standard"},
                    ),
                )
            return self._client

    # ------------------------------------------------------------------ error policy

    def _fail(self, exc: BaseException, what: str, bucket: str, key: str | None) -> Exception:
        """The difiisr error for a non-transient failure of ``what`` on ``s3://bucket/key``."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        uri = f"s3://{bucket}/{key or ''}"
        where = self.settings.where
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageAccessError(
                f"{what} {uri}: no S3 credentials found ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or a profile / instance role)"
            )
        code, status = _error_code(exc)
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)
        if code in _CREDENTIAL_CODES:
            return StorageAccessError(
                f"{what} {uri}: the S3 server at {where} refused the credentials ({code}: {message}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and AWS_ENDPOINT_URL"
            )
        if code in _NO_BUCKET_CODES:
            return StorageAccessError(
                f"{what} {uri}: bucket {bucket!r} does not exist at {where}; create it or fix the URI "
                "(and AWS_ENDPOINT_URL)"
            )
        if code in _DENIED_CODES or status == 403:
            return StorageAccessError(
                f"{what} {uri}: access denied at {where} ({code}); give these credentials (AWS_ACCESS_KEY_ID) "
                f"permission to {what} under s3://{bucket}/, or use credentials that have it"
            )
        if code in _MISSING_KEY_CODES or status == 404:
            return ObjectNotFoundError(f"{uri}: no such object at {where}")
        if status in (301, 307) or code in ("PermanentRedirect", "TemporaryRedirect"):
            return StorageAccessError(
                f"{what} {uri}: the bucket lives in another region or endpoint ({code}); set AWS_DEFAULT_REGION "
                "or AWS_ENDPOINT_URL to the bucket's"
            )
        if isinstance(exc, StorageError):
            return exc
        return StorageAccessError(
            f"{what} {uri}: refused by {where}: {code or type(exc).__name__}: {message}"
        )

    def _call(self, fn: Callable[[], T], what: str, bucket: str, key: str | None = None) -> T:
        """``fn()`` with retries for transient errors; every failure becomes a ``StorageError``."""
        uri = f"s3://{bucket}/{key or ''}"
        try:
            return self.settings.retry.call(fn, is_transient, f"{what} {uri}")
        except RetriesExhausted as exc:
            raise StorageUnavailableError(
                f"{what} {uri}: the S3 server at {self.settings.where} kept failing ({exc.last}) for "
                f"{exc.attempts} attempts over {exc.waited_s:.0f} s; check that it is up and reachable "
                "(AWS_ENDPOINT_URL), then rerun: finished outputs are kept and skipped"
            ) from exc.last
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, what, bucket, key) from exc

    # ------------------------------------------------------------------ operations

    def check_bucket(self, bucket: str, prefix: str = "", what: str = "access") -> None:
        """Stop early (``StorageAccessError``) when ``bucket`` is missing or these credentials may not list it.

        A one-key listing rather than HEAD: its error body names the cause (``NoSuchBucket``,
        ``InvalidAccessKeyId``, ``AccessDenied``), where a HEAD answers a bare 403/404.
        """
        self._call(
            lambda: self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1), what, bucket, prefix
        )

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order, one page (``page_size`` keys) in memory at a time."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": self.settings.page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(lambda kw=kwargs: self.client.list_objects_v2(**kw), "list", bucket, prefix)
            for obj in page.get("Contents", ()):
                yield ObjectInfo(str(obj["Key"]), int(obj.get("Size", 0)))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """Size and decoded user metadata of ``key``; None when it does not exist."""
        try:
            resp = self._call(lambda: self.client.head_object(Bucket=bucket, Key=key), "read", bucket, key)
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, int(resp.get("ContentLength", 0)), decode_metadata(resp.get("Metadata", {})))

    def download(self, bucket: str, key: str, dest: Path, chunk: int = MIB) -> int:
        """Stream ``key`` into the file ``dest`` (rewritten on each retry); returns its size in bytes."""

        def fetch() -> int:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            size = 0
            with open(dest, "wb") as fh:
                for block in resp["Body"].iter_chunks(chunk):
                    fh.write(block)
                    size += len(block)
            return size

        return self._call(fetch, "read", bucket, key)

    def upload(
        self,
        bucket: str,
        key: str,
        src: Path,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write the file ``src`` to ``key`` atomically with ``metadata`` (single PUT, or multipart when large)."""
        extra = {"Metadata": encode_metadata(metadata or {}), "ContentType": content_type}
        size = src.stat().st_size
        if size <= self.settings.multipart_threshold:
            data = src.read_bytes()
            self._call(
                lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra),
                "write",
                bucket,
                key,
            )
            return
        self._multipart(bucket, key, src, size, extra)

    def _multipart(self, bucket: str, key: str, src: Path, size: int, extra: Mapping[str, Any]) -> None:
        created = self._call(
            lambda: self.client.create_multipart_upload(Bucket=bucket, Key=key, **extra), "write", bucket, key
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            with open(src, "rb") as fh:
                for number in range(1, -(-size // self.settings.part_size) + 1):
                    body = fh.read(self.settings.part_size)
                    resp = self._call(
                        lambda n=number, b=body: self.client.upload_part(
                            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=b
                        ),
                        "write",
                        bucket,
                        key,
                    )
                    parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            self._call(
                lambda: self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
                "write",
                bucket,
                key,
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception as exc:  # noqa: BLE001 - the original error matters; abort_stale_uploads cleans later
                log.warning(
                    "s3://%s/%s: could not abort multipart upload %s: %s", bucket, key, upload_id, exc
                )
            raise

    def abort_stale_uploads(self, bucket: str, prefix: str, older_than_s: float) -> int:
        """Abort incomplete multipart uploads under ``prefix`` started more than ``older_than_s`` ago (left by
        killed writers; invisible, but they hold storage). Returns how many were aborted."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
        aborted = 0
        markers: dict[str, str] = {}
        while True:
            page = self._call(
                lambda m=dict(markers): self.client.list_multipart_uploads(Bucket=bucket, Prefix=prefix, **m),
                "list",
                bucket,
                prefix,
            )
            for upload in page.get("Uploads", ()):
                initiated = upload.get("Initiated")
                if isinstance(initiated, dt.datetime) and initiated < cutoff:
                    self._call(
                        lambda u=upload: self.client.abort_multipart_upload(
                            Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]
                        ),
                        "write",
                        bucket,
                        upload["Key"],
                    )
                    aborted += 1
            if not page.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }
        if aborted:
            log.info("s3://%s/%s: aborted %d stale multipart upload(s)", bucket, prefix, aborted)
        return aborted


__all__ = [
    "METADATA_LIMIT",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Client",
    "S3Settings",
    "StorageAccessError",
    "StorageError",
    "StorageUnavailableError",
    "decode_metadata",
    "encode_metadata",
    "is_transient",
]
