"""S3 objects and stores against a real SeaweedFS S3 server on 127.0.0.1.

Transient faults (503 SlowDown, 500 InternalError, a connection reset) come from a small TCP proxy on 127.0.0.1 in
front of the real server: it answers the first connections with the fault and forwards everything after that.
A crash in the middle of a multipart upload is made with a botocore event hook on the real client.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest

from difiisr.errors import ExitCode
from difiisr.storage.retry import RetryPolicy
from difiisr.storage.s3 import (
    MIB,
    ObjectNotFoundError,
    S3Client,
    S3Settings,
    StorageAccessError,
    StorageUnavailableError,
)
from difiisr.storage.store import LocalStore, S3Store
from difiisr.storage.uri import parse_location

pytestmark = pytest.mark.services

FAST = RetryPolicy(attempts=4, base_s=0.05, cap_s=0.2)
_FAULT_BODY = {
    "503": ("503 Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
}


class FaultyProxy:
    """TCP proxy on 127.0.0.1: the first connections get ``faults`` ("503", "500", "reset"), later ones are
    forwarded byte for byte to ``upstream`` (the request's Host header is kept, so signatures stay valid)."""

    def __init__(self, upstream_port: int, faults: list[str]) -> None:
        self.upstream_port = upstream_port
        self.faults = list(faults)
        self.served: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            fault = self.faults.pop(0) if self.faults else None
            target = self._fault if fault else self._forward
            threading.Thread(target=target, args=(conn, fault), daemon=True).start()

    @staticmethod
    def _drain_request(conn: socket.socket) -> None:
        conn.settimeout(0.3)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def _fault(self, conn: socket.socket, fault: str) -> None:
        self._drain_request(conn)
        self.served.append(fault)
        if fault == "reset":  # RST instead of FIN: the client sees "connection reset by peer"
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        status, code, message = _FAULT_BODY[fault]
        body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        conn.close()

    def _forward(self, conn: socket.socket, _: str | None) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threads = [
            threading.Thread(target=pipe, args=p, daemon=True) for p in ((conn, upstream), (upstream, conn))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn.close()
        upstream.close()


@pytest.fixture
def bucket(s3_env) -> str:
    return s3_env.make_bucket(f"st-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def s3(s3_env) -> S3Client:
    return S3Client(S3Settings.from_env(retry=FAST))


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]


def test_settings_come_from_the_standard_environment(s3_env) -> None:
    settings = S3Settings.from_env()
    assert settings.endpoint_url == s3_env.endpoint_url and settings.region == s3_env.region
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_REGION": "eu-west-3"}
    assert (S3Settings.from_env(env).endpoint_url, S3Settings.from_env(env).region) == (
        "http://b:2",
        "eu-west-3",
    )


def test_listing_is_paged_lazily_in_key_order(s3: S3Client, bucket: str) -> None:
    keys = [f"in/{i:03d}.png" for i in range(23)]
    for key in keys:
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.client.put_object(Bucket=bucket, Key="other/z.png", Body=b"x")
    small = S3Client(S3Settings.from_env(retry=FAST, page_size=10))
    calls: list[str] = []
    small.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append("list"))
    listing = small.list(bucket, "in/")
    first = next(listing)
    assert first.key == "in/000.png" and first.size == 1 and len(calls) == 1  # one page fetched, not all
    rest = list(listing)
    assert [first.key] + [o.key for o in rest] == keys and len(calls) == 3


def test_metadata_travels_with_the_object(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(b"\x89PNG fake")
    record = {"source": "café/ü 100%.png", "inference.tile_overlap": "32", "model": "models:/difiisr-x4/3"}
    s3.upload(bucket, "out/a.png", src, metadata=record, content_type="image/png")
    info = s3.head(bucket, "out/a.png")
    assert info is not None and info.metadata == record and info.size == src.stat().st_size
    assert s3.client.head_object(Bucket=bucket, Key="out/a.png")["ContentType"] == "image/png"
    assert s3.head(bucket, "out/missing.png") is None
    got = tmp_path / "b.png"
    assert (
        s3.download(bucket, "out/a.png", got) == src.stat().st_size and got.read_bytes() == src.read_bytes()
    )
    with pytest.raises(ObjectNotFoundError, match=f"s3://{bucket}/out/missing.png: no such object"):
        s3.download(bucket, "out/missing.png", got)


def test_multipart_upload_is_complete_with_metadata_or_invisible(bucket: str, tmp_path: Path, s3_env) -> None:
    s3 = S3Client(S3Settings.from_env(retry=FAST, multipart_threshold=5 * MIB, part_size=5 * MIB))
    src = tmp_path / "big.tif"
    src.write_bytes(bytes(range(256)) * (11 * MIB // 256 + 3))
    s3.upload(bucket, "big.tif", src, metadata={"model.digest": "abc"}, content_type="image/tiff")
    info = s3.head(bucket, "big.tif")
    assert info is not None and info.size == src.stat().st_size and info.metadata == {"model.digest": "abc"}
    parts = s3.client.head_object(Bucket=bucket, Key="big.tif")["ETag"]
    assert parts.strip('"').endswith("-3")  # really three parts
    back = tmp_path / "back.tif"
    s3.download(bucket, "big.tif", back)
    assert back.read_bytes() == src.read_bytes()

    # a writer that dies after the first part: nothing becomes visible and the upload is aborted
    sent: list[int] = []

    def crash_on_second_part(params, **_):
        sent.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise KeyboardInterrupt("killed mid-upload")

    s3.client.meta.events.register("provide-client-params.s3.UploadPart", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        s3.upload(bucket, "half.tif", src, metadata={"model.digest": "abc"})
    assert sent == [1, 2]
    assert s3.head(bucket, "half.tif") is None
    assert s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_stale_multipart_uploads_are_aborted(s3: S3Client, bucket: str) -> None:
    s3.client.create_multipart_upload(Bucket=bucket, Key="out/x.png")
    s3.client.create_multipart_upload(Bucket=bucket, Key="elsewhere/y.png")
    assert s3.abort_stale_uploads(bucket, "out/", older_than_s=3600) == 0  # a live writer's upload is kept
    time.sleep(1.1)
    assert s3.abort_stale_uploads(bucket, "out/", older_than_s=1) == 1
    left = [u["Key"] for u in s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["elsewhere/y.png"]


def test_transient_faults_are_retried_until_the_call_succeeds(
    s3_env, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultyProxy(s3_env.s3_port, ["503", "reset", "500"])
    try:
        s3 = S3Client(S3Settings(endpoint_url=proxy.url, region=s3_env.region, retry=FAST))
        src = tmp_path / "a.png"
        src.write_bytes(b"payload")
        with caplog.at_level(logging.WARNING):
            s3.upload(bucket, "a.png", src, metadata={"k": "v"})
        assert proxy.served == ["503", "reset", "500"]
        retried = _retries(caplog)
        assert len(retried) == 3 and all(f"write s3://{bucket}/a.png" in m for m in retried)
        assert "SlowDown" in retried[0] and "InternalError" in retried[2]
        info = s3.head(bucket, "a.png")
        assert info is not None and info.metadata == {"k": "v"}
    finally:
        proxy.close()


def test_a_store_that_stays_down_fails_the_job_after_bounded_retries(
    s3_env, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    s3 = S3Client(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", region=s3_env.region, retry=FAST))
    with caplog.at_level(logging.WARNING), pytest.raises(StorageUnavailableError) as info:
        list(s3.list(bucket, "in/"))
    message = str(info.value)
    assert f"list s3://{bucket}/in/" in message and "4 attempts" in message and "AWS_ENDPOINT_URL" in message
    assert "rerun" in message and info.value.exit_code == ExitCode.JOB_FAILED
    assert len(_retries(caplog)) == 3


def test_permanent_errors_stop_at_once_naming_bucket_and_fix(
    s3_env, bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = S3Client(S3Settings.from_env(retry=FAST))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(
            StorageAccessError, match="bucket 'no-such-bucket-x' does not exist at .*create it"
        ):
            s3.check_bucket("no-such-bucket-x", "in/", what="read")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-key-id")
        bad = S3Client(S3Settings.from_env(retry=FAST))
        with pytest.raises(StorageAccessError) as info:
            bad.check_bucket(bucket, "in/")
    assert f"s3://{bucket}/in/" in str(info.value) and "refused the credentials (InvalidAccessKeyId" in str(
        info.value
    )
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert info.value.exit_code == ExitCode.JOB_FAILED
    assert _retries(caplog) == []  # never retried


# ------------------------------------------------------------------------------------------ stores


def _tree(root: Path) -> None:
    for rel in (
        "b.png",
        "a/x.png",
        "a/.hidden.png",
        ".cache/y.png",
        "a/.x.tmp-1-0a0b0c0d-abcdefgh.png",
        "c/d/e.tif",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"1")


def test_local_store_lists_recursively_without_hidden_or_temp_files(tmp_path: Path) -> None:
    _tree(tmp_path / "in")
    store = LocalStore(parse_location(tmp_path / "in"))
    assert list(store.list_keys()) == ["a/x.png", "b.png", "c/d/e.tif"]
    assert store.head("a/x.png").size == 1 and store.head("a/none.png") is None


def test_s3_store_lists_like_the_local_store(s3_env, bucket: str, tmp_path: Path) -> None:
    _tree(tmp_path / "in")
    client = s3_env.client()
    for path in sorted((tmp_path / "in").rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"data/{path.relative_to(tmp_path / 'in')}", Body=b"1")
    client.put_object(Bucket=bucket, Key="data/folder/", Body=b"")  # a console-made "folder" marker
    store = S3Store(parse_location(f"s3://{bucket}/data"))
    assert list(store.list_keys()) == ["a/x.png", "b.png", "c/d/e.tif"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_put_is_all_or_nothing(kind: str, s3_env, bucket: str, tmp_path: Path) -> None:
    uri = str(tmp_path / "out") if kind == "local" else f"s3://{bucket}/out/"
    store = LocalStore(parse_location(uri)) if kind == "local" else S3Store(parse_location(uri))
    try:
        with pytest.raises(RuntimeError), store.put("sub/a.png", metadata={"k": "v"}) as path:
            path.write_bytes(b"half")
            raise RuntimeError("encoder crashed")
        assert store.head("sub/a.png") is None
        with store.put("sub/a.png", metadata={"k": "v"}) as path:
            path.write_bytes(b"whole")
        with store.fetch("sub/a.png") as path:
            assert path.read_bytes() == b"whole"
        info = store.head("sub/a.png")
        assert info is not None and info.size == 5 and (kind == "local" or info.metadata == {"k": "v"})
        if kind == "local":  # no temp file left beside it
            assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["a.png"]
        with pytest.raises(ObjectNotFoundError), store.fetch("sub/none.png"):
            pass
    finally:
        store.close()
