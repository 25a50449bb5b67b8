"""Artifact verifications in the background (issue 13, item 1).

The engine asks for a verification (``VerifyArtifact``) when a revision is about to get
traffic or is the revision a rollback would go to; nothing waits on it but that route write.
This keeps one verification per release and revision running at a time, on its own small
thread pool (hashing gigabytes must not starve the analysis threads or Kopf's), bounded by
the policy's ``integrity.timeout``, and keeps each release's latest results in memory until
the status records them (``Inputs.integrity``). A finished verification wakes the release.

Nothing here is persisted: a restarted operator has no results and verifies again what the
engine still needs (the verdicts already recorded in the status stay valid).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from rewind.adapters.artifacts import Verdict
from rewind.api import IntegritySpec, ModelSpec, parse_duration
from rewind.engine import IntegrityResult

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, release
#: Verifies one model against its digest (and signature): ``ArtifactVerifier.verify_model``.
VerifyModel = Callable[[str, ModelSpec, IntegritySpec], Verdict]


class Verifications:
    """Background verifications per release and revision, and their latest results.

    ``wake(namespace, release)`` is called when one finishes (the release's loop reconciles
    at once). ``threads``: how many verifications run at once across all releases.
    """

    def __init__(
        self,
        verify: VerifyModel,
        *,
        threads: int = 2,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._verify = verify
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="rewind-verify"
        )
        self._clock = clock
        self._running: dict[Key, dict[int, asyncio.Task[None]]] = {}
        self._results: dict[Key, dict[int, IntegrityResult]] = {}
        self.wake: Callable[[str, str], None] = lambda _ns, _name: None

    def results(self, namespace: str, release: str) -> dict[int, IntegrityResult]:
        """The latest finished verification per revision (revision -> result)."""
        return dict(self._results.get((namespace, release), {}))

    def running(self, namespace: str, release: str) -> frozenset[int]:
        return frozenset(self._running.get((namespace, release), {}))

    def start(
        self,
        namespace: str,
        release: str,
        revision: int,
        model: ModelSpec,
        integrity: IntegritySpec,
    ) -> bool:
        """Start verifying ``revision`` (``model``: its spec.model) unless that runs; True
        when it was started now."""
        key = (namespace, release)
        running = self._running.setdefault(key, {})
        if revision in running:
            return False
        running[revision] = asyncio.create_task(
            self._run(key, revision, model, integrity),
            name=f"rewind-verify:{namespace}/{release}/r{revision}",
        )
        return True

    def fail(self, namespace: str, release: str, revision: int, want: str, why: str) -> None:
        """Record a verification that could not even start (e.g. the revision's snapshot
        is unreadable) as a failed one, and wake the release."""
        self._store((namespace, release), IntegrityResult(
            revision, False, self._clock(), want, message=why,
        ))

    async def _run(
        self, key: Key, revision: int, model: ModelSpec, integrity: IntegritySpec
    ) -> None:
        namespace, release = key
        timeout = parse_duration(integrity.timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            verdict = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._verify, namespace, model, integrity),
                timeout,
            )
        except TimeoutError:
            # The thread cannot be stopped; it ends by the store's own timeouts. The
            # revision is not cleared meanwhile: a slow store is a failed verification.
            verdict = Verdict(
                False,
                f"{model.artifact_uri}: verification did not finish within integrity.timeout "
                f"{integrity.timeout}",
            )
        except Exception as err:  # a verifier bug must fail the verdict, not the loop
            log.exception("%s/%s: verifying r%d failed", namespace, release, revision)
            verdict = Verdict(False, f"{model.artifact_uri}: verifier error: {err}")
        finally:
            self._running.get(key, {}).pop(revision, None)
        log.info(
            "%s/%s: r%d's artifact %s in %.1fs: %s", namespace, release, revision,
            "verified" if verdict.ok else "FAILED verification", loop.time() - started,
            verdict.message,
        )
        self._store(key, IntegrityResult(
            revision, verdict.ok, self._clock(), model.artifact_digest,
            digest=verdict.digest, message=verdict.message,
        ))

    def _store(self, key: Key, result: IntegrityResult) -> None:
        self._results.setdefault(key, {})[result.revision] = result
        self.wake(*key)

    def forget(self, namespace: str, release: str) -> None:
        """The release is gone (or run by another replica): cancel and drop everything."""
        key = (namespace, release)
        for task in self._running.pop(key, {}).values():
            task.cancel()
        self._results.pop(key, None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
