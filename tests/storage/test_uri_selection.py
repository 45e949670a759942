"""Storage locations (parsing, the overlap guard), key selection and shards, and the retry policy (no services)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from difiisr.errors import ExitCode
from difiisr.storage.overlap import OverlapError
from difiisr.storage.retry import RetriesExhausted, RetryPolicy
from difiisr.storage.selection import Selection, Shard, shard_of
from difiisr.storage.uri import LocationError, check_separate, parse_location


def test_s3_and_local_locations_parse_to_one_form(tmp_path: Path) -> None:
    loc = parse_location("s3://my-bucket/batch/incoming")
    assert (loc.scheme, loc.bucket, loc.prefix) == ("s3", "my-bucket", "batch/incoming/")
    assert loc.uri == "s3://my-bucket/batch/incoming/"
    assert loc.child_uri("day1/a.png") == "s3://my-bucket/batch/incoming/day1/a.png"
    assert parse_location("s3://my-bucket").prefix == ""
    assert parse_location(str(tmp_path / "x")).path == (tmp_path / "x").resolve()
    assert parse_location(f"file://{tmp_path}/x").path == (tmp_path / "x").resolve()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ab/x", "not a valid S3 bucket name"),
        ("s3://bucket/a/../b", "must not contain '.', '..'"),
        ("s3://bucket/a//b", "or empty segments"),  # S3 keys may hold '//': never guess which was meant
        ("file://host/x", "name a local path"),
    ],
)
def test_bad_locations_are_usage_errors_naming_the_uri(uri: str, message: str) -> None:
    with pytest.raises(LocationError, match=message) as info:
        parse_location(uri)
    assert uri in str(info.value) and info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("output", "source", "word"),
    [
        ("s3://bkt/data/", "s3://bkt/data", "is"),
        ("s3://bkt/data/in/sr/", "s3://bkt/data/in/", "lies inside"),
        ("s3://bkt/", "s3://bkt/data/in/", "holds"),
    ],
)
def test_overlapping_s3_prefixes_are_refused(output: str, source: str, word: str) -> None:
    with pytest.raises(OverlapError, match=f"--output {output}.* {word} the input {source}") as info:
        check_separate(parse_location(output), [parse_location(source)])
    assert info.value.exit_code == ExitCode.USAGE


def test_disjoint_locations_pass(tmp_path: Path) -> None:
    # a common string prefix is not containment: prefixes are whole path segments
    check_separate(parse_location("s3://bkt/data/in-sr/"), [parse_location("s3://bkt/data/in/")])
    check_separate(parse_location("s3://other/data/in/"), [parse_location("s3://bkt/data/in/")])
    check_separate(parse_location(str(tmp_path / "in")), [parse_location("s3://bkt/in/")])
    check_separate(parse_location(str(tmp_path / "out")), [parse_location(str(tmp_path / "in"))])
    with pytest.raises(OverlapError, match="holds the input"):
        check_separate(parse_location(str(tmp_path)), [parse_location(str(tmp_path / "in"))])


def test_shards_cover_every_key_exactly_once_and_are_stable() -> None:
    keys = [f"day{d}/frame_{i:05d}.png" for d in range(4) for i in range(2500)]
    for count in (1, 3, 8):
        taken = [[k for k in keys if Shard(i, count).holds(k)] for i in range(count)]
        assert sorted(k for part in taken for k in part) == sorted(keys)  # union = all, no key twice
        if count > 1:  # roughly even: no shard gets under half its share of 10k keys
            assert min(map(len, taken)) > len(keys) / count / 2
    # the hash depends on the key only (sha256, first 8 bytes, mod N): fixed values guard the scheme, which
    # must never change while pods of one run may run different versions
    assert (shard_of("day0/frame_00000.png", 8), shard_of("a.png", 1000), shard_of("a.png", 7)) == (5, 672, 1)


@pytest.mark.parametrize(
    ("text", "expected"), [("0/4", Shard(0, 4)), (" 3 / 4 ", Shard(3, 4)), (None, Shard())]
)
def test_shard_parsing(text: str | None, expected: Shard) -> None:
    assert Shard.parse(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "0/0"])
def test_bad_shards_are_refused_with_the_form(text: str) -> None:
    with pytest.raises(Exception, match=r"i/N|0 <= i < N") as info:
        Shard.parse(text)
    assert getattr(info.value, "exit_code", None) == ExitCode.USAGE


def test_selection_by_glob_and_extension() -> None:
    keys = ["a.png", "b.PNG", "c.tiff", "notes.txt", "cam1/d.jpg", "cam2/e.png", "f.json"]
    sel = Selection("*", (".png", ".tif", ".tiff", ".jpg", ".jpeg"))
    assert list(sel.select(keys)) == ["a.png", "b.PNG", "c.tiff", "cam1/d.jpg", "cam2/e.png"]
    assert list(Selection("cam*/*", (".png", ".jpg")).select(keys)) == ["cam1/d.jpg", "cam2/e.png"]
    assert list(Selection("*.png").select(keys)) == ["a.png", "cam2/e.png"]  # case-sensitive glob


class _Flaky:
    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def test_retry_policy_retries_transient_errors_with_bounded_backoff() -> None:
    policy = RetryPolicy(attempts=6, base_s=0.5, cap_s=3.0)
    slept: list[float] = []
    fn = _Flaky(4, ConnectionResetError("reset by peer"))
    assert policy.call(fn, lambda e: isinstance(e, ConnectionError), "get x", sleep=slept.append) == "ok"
    assert fn.calls == 5 and len(slept) == 4
    # equal jitter: each pause within [full/2, full] of 0.5, 1, 2, 3 (capped)
    for pause, full in zip(slept, (0.5, 1.0, 2.0, 3.0), strict=True):
        assert full / 2 <= pause <= full


def test_retry_policy_gives_up_after_its_attempts_and_never_retries_permanent_errors() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.01)
    fn = _Flaky(10, ConnectionResetError("reset"))
    with pytest.raises(RetriesExhausted, match="put y: still failing after 3 attempts") as info:
        policy.call(fn, lambda e: isinstance(e, ConnectionError), "put y", sleep=lambda s: None)
    assert fn.calls == 3 and isinstance(info.value.last, ConnectionResetError)
    denied = _Flaky(10, PermissionError("denied"))
    with pytest.raises(PermissionError):
        policy.call(denied, lambda e: isinstance(e, ConnectionError), "put y", sleep=lambda s: None)
    assert denied.calls == 1


def test_default_policy_waits_at_most_about_a_minute_and_a_half() -> None:
    policy = RetryPolicy()
    rng = random.Random(0)
    worst = sum(min(policy.cap_s, policy.base_s * 2**n) for n in range(policy.attempts - 1))
    assert 60 <= worst <= 100
    assert all(policy.delay(n, rng) <= policy.cap_s for n in range(1, 30))
