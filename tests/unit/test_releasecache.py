"""ReleaseCache: which ModelRelease body a reconcile may decide from without a GET."""

from __future__ import annotations

from typing import Any

from rewind.releasecache import ReleaseCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def body(rv: str, uid: str = "u1", name: str = "fraud") -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "uid": uid, "resourceVersion": rv}}


def rv_of(found: Any) -> str | None:
    return None if found is None else str(found["metadata"]["resourceVersion"])


def test_serves_the_latest_body_the_watch_delivered() -> None:
    cache = ReleaseCache()
    assert cache.get("ml", "fraud") is None  # never seen: read it
    cache.seen("ADDED", body("1"))
    cache.seen("MODIFIED", body("2"))
    assert rv_of(cache.get("ml", "fraud")) == "2"
    assert cache.get("ml", "other") is None


def test_after_its_own_write_reads_until_the_watch_delivers_that_write() -> None:
    clock = Clock()
    cache = ReleaseCache(clock=clock)
    cache.seen("MODIFIED", body("5"))
    cache.wrote("ml", "fraud", "7")
    assert cache.get("ml", "fraud") is None  # the watch is behind the write
    cache.seen("MODIFIED", body("6"))  # someone else's write, older than ours
    assert cache.get("ml", "fraud") is None
    cache.seen("MODIFIED", body("7"))  # the echo of ours
    assert rv_of(cache.get("ml", "fraud")) == "7"
    cache.seen("MODIFIED", body("8"))
    assert rv_of(cache.get("ml", "fraud")) == "8"


def test_an_echo_that_never_comes_stops_holding_after_echo_wait() -> None:
    clock = Clock()
    cache = ReleaseCache(clock=clock, echo_wait=5.0)
    cache.seen("MODIFIED", body("5"))
    cache.wrote("ml", "fraud", "7")
    clock.now += 4.9
    assert cache.get("ml", "fraud") is None
    clock.now += 0.2
    # Batched or re-listed watch events may skip that very version: the held body is
    # older than the write, so it is dropped rather than served ...
    assert cache.get("ml", "fraud") is None
    assert cache.get("ml", "fraud") is None
    # ... and the next body the watch delivers is trusted again.
    cache.seen("MODIFIED", body("9"))
    assert rv_of(cache.get("ml", "fraud")) == "9"


def test_a_write_whose_version_is_unknown_reads_until_the_next_event() -> None:
    cache = ReleaseCache()
    cache.seen("MODIFIED", body("5"))
    cache.wrote("ml", "fraud", None)  # a refused write: the object moved on
    assert cache.get("ml", "fraud") is None
    cache.seen("MODIFIED", body("6"))
    assert rv_of(cache.get("ml", "fraud")) == "6"


def test_a_late_deletion_of_the_old_object_keeps_the_new_one() -> None:
    cache = ReleaseCache()
    cache.seen("ADDED", body("3", uid="old"))
    cache.seen("ADDED", body("9", uid="new"))  # deleted and created again from Git
    cache.seen("DELETED", body("4", uid="old"))
    assert rv_of(cache.get("ml", "fraud")) == "9"
    cache.seen("DELETED", body("10", uid="new"))
    assert cache.get("ml", "fraud") is None
    assert len(cache) == 0


def test_forget_and_clear_drop_bodies() -> None:
    cache = ReleaseCache()
    cache.seen("ADDED", body("1"))
    cache.seen("ADDED", body("1", name="vision"))
    cache.forget("ml", "fraud")
    assert cache.get("ml", "fraud") is None
    assert rv_of(cache.get("ml", "vision")) == "1"
    cache.clear()  # a standby replica's watch was paused: nothing it holds is trusted
    assert cache.get("ml", "vision") is None
