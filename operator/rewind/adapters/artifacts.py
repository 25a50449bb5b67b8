"""Artifact integrity: are the bytes in the store the bytes that were released? (issue 13)

``model.artifactDigest`` is checked against the artifact itself. Blocking I/O throughout:
callers run :meth:`ArtifactVerifier.verify` in a worker thread (``asyncio.to_thread``),
never on the event loop.

The digest of an artifact (``rewind-manifest-v1``)
--------------------------------------------------
- **One file** (a URI that does not end with ``/`` and names a file or object): ``sha256:``
  of its bytes, what ``sha256sum model.onnx`` prints.
- **A directory** (a local directory, or a URI ending with ``/``: a directory or an object
  prefix, e.g. a model of safetensors shards): every regular file under it, recursively, is
  one line ``<sha256 hex><two spaces><path relative to the directory, / separated>`` as
  ``sha256sum`` prints it, the lines sorted by path bytes (``LC_ALL=C``), each ending with
  a newline; the digest is ``sha256:`` of that text, the *manifest*. A file named
  ``SHA256SUMS`` at the top is not part of it: a release may publish the manifest there,
  and the verifier then names the files that differ from it. Standard tools compute it::

      cd model/ && find . -type f ! -path ./SHA256SUMS -printf '%P\\0' \\
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum

  Paths with a newline or a backslash are refused (``sha256sum`` escapes them). An empty
  directory has no digest (refused).

Stores: ``file://`` URIs and plain local paths (tests, volumes), ``https://`` and ``http://``
(one file; a directory only through its published ``SHA256SUMS``), and ``s3://bucket/key``
(GetObject / ListObjectsV2 signed with AWS Signature V4; endpoint, region and credentials
from :class:`S3Settings`; no credentials: anonymous requests).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlparse
from xml.etree import ElementTree

from rewind.api import IntegritySpec, ModelSpec

#: The file a release may publish at the top of a directory artifact: its manifest.
MANIFEST_NAME = "SHA256SUMS"
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact could not be read (not found, store unreachable, refused)."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification. ``ok`` False: ``message`` names the file (or the
    object) that differs, or why it could not be read."""

    ok: bool
    message: str
    digest: str = ""  # what was computed ("" when nothing could be read)
    files: int = 0


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 store (AWS when ``endpoint_url`` is None: virtual-hosted
    addressing; an S3-compatible server otherwise: path-style). No credentials: anonymous
    requests (workload identity is not supported yet)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


class _Store(Protocol):
    def files(self) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]: ...
    def single(self) -> Callable[[], IO[bytes]] | None: ...


def file_digest(stream: IO[bytes]) -> str:
    """sha256 hex of a stream, read in chunks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def manifest(lines: dict[str, str]) -> str:
    """The manifest text of ``{relative path: sha256 hex}`` (see the module docstring)."""
    for path in lines:
        if "\n" in path or "\\" in path:
            raise ArtifactError(f"{path!r}: paths with a newline or a backslash are refused")
    ordered = sorted(lines, key=lambda p: p.encode())
    return "".join(f"{lines[p]}  {p}\n" for p in ordered)


def parse_manifest(text: str) -> dict[str, str]:
    """``{path: sha256 hex}`` of a ``sha256sum`` listing (``*`` binary markers allowed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, path = line.partition(" ")
        out[path[1:] if path[:1] in (" ", "*") else path] = digest
    return out


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# -- stores -------------------------------------------------------------------------------


def _open_local(path: Path) -> IO[bytes]:
    return path.open("rb")


class _LocalStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def single(self) -> Callable[[], IO[bytes]] | None:
        if self.path.is_file():
            return lambda: self.path.open("rb")
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: no such file or directory")
        return None

    def files(self) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            for name in names:
                full = Path(root) / name
                if full.is_file() and not full.is_symlink():
                    rel = full.relative_to(self.path).as_posix()
                    yield rel, functools.partial(_open_local, full)


class _HttpStore:
    def __init__(self, uri: str, timeout: float) -> None:
        self.uri, self.timeout = uri, timeout

    def _open(self, uri: str) -> IO[bytes]:
        try:
            response: IO[bytes] = urllib.request.urlopen(uri, timeout=self.timeout)
        except OSError as err:  # URLError, HTTPError, timeouts
            raise ArtifactError(f"{uri}: {err}") from err
        return response

    def single(self) -> Callable[[], IO[bytes]] | None:
        return None if self.uri.endswith("/") else (lambda: self._open(self.uri))

    def files(self) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
        # HTTP cannot list: the published manifest says which files make the directory.
        with self._open(self.uri + MANIFEST_NAME) as f:
            text = f.read()
        yield MANIFEST_NAME, (lambda: io.BytesIO(text))
        for rel in parse_manifest(text.decode()):
            yield rel, functools.partial(self._open, self.uri + rel)


def _quote(text: str, safe: str) -> str:
    return urllib.parse.quote(text, safe=safe)


class _S3Store:
    """GetObject and ListObjectsV2 over plain HTTP(S), signed with AWS Signature V4.

    Not boto3: botocore requires python-dateutil < 3 and the operator's lock holds 4.0, so
    the two cannot be installed together. Two read-only calls need no SDK."""

    def __init__(self, uri: str, settings: S3Settings, timeout: float) -> None:
        parsed = urlparse(uri)
        self.uri, self.bucket, self.key = uri, parsed.netloc, parsed.path.lstrip("/")
        self.settings, self.timeout = settings, timeout
        self.region = settings.region or "us-east-1"
        if settings.endpoint_url:  # an S3-compatible server: path-style addressing
            base = settings.endpoint_url.rstrip("/")
            self._base, self._prefix = base, f"/{_quote(self.bucket, '')}"
        else:
            self._base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
            self._prefix = ""

    def _request(self, key: str, query: dict[str, str]) -> IO[bytes]:
        path = self._prefix + "/" + _quote(key, "/-_.~")
        canonical_query = "&".join(
            f"{_quote(k, '-_.~')}={_quote(v, '-_.~')}" for k, v in sorted(query.items())
        )
        url = self._base + path + (f"?{canonical_query}" if canonical_query else "")
        headers: dict[str, str] = {}
        access, secret = self.settings.access_key_id, self.settings.secret_access_key
        if access and secret:
            headers = self._signed(path, canonical_query, access, secret)
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            response: IO[bytes] = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            detail = err.read(2048).decode(errors="replace")
            code = re.search(r"<Code>([^<]+)</Code>", detail)
            raise ArtifactError(
                f"s3://{self.bucket}/{key}: HTTP {err.code}"
                + (f" {code.group(1)}" if code else "")
            ) from err
        except OSError as err:
            raise ArtifactError(f"s3://{self.bucket}/{key}: {err}") from err
        return response

    def _signed(self, path: str, query: str, access: str, secret: str) -> dict[str, str]:
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = urlparse(self._base).netloc
        payload = hashlib.sha256(b"").hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        names = ";".join(sorted(headers))
        canonical = "\n".join([
            "GET", path, query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), names, payload,
        ])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join([
            "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()
        ])
        key = ("AWS4" + secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "x-amz-content-sha256": payload,
            "x-amz-date": stamp,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}",
        }

    def single(self) -> Callable[[], IO[bytes]] | None:
        if self.key.endswith("/") or not self.key:
            return None
        return functools.partial(self._request, self.key, {})

    def files(self) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
        prefix = self.key if self.key.endswith("/") or not self.key else self.key + "/"
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            with self._request("", query) as f:
                root = ElementTree.fromstring(f.read())
            ns = {"s3": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
            find = "s3:" if ns else ""
            keys += [k.text or "" for k in root.iterfind(f"{find}Contents/{find}Key", ns)]
            more = root.findtext(f"{find}IsTruncated", "false", ns) == "true"
            token = root.findtext(f"{find}NextContinuationToken", "", ns) or ""
            if not more or not token:
                break
        for key in keys:
            if not key.endswith("/"):  # "directory" markers are not files
                yield key[len(prefix):], functools.partial(self._request, key, {})


# -- the verifier -------------------------------------------------------------------------


class ArtifactVerifier:
    """Checks an artifact against its ``sha256:`` digest (blocking; see the module
    docstring for the digest of a directory)."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def _store(self, uri: str, s3: S3Settings | None) -> _Store:
        scheme = urlparse(uri).scheme
        if scheme in ("", "file"):
            path = unquote(urlparse(uri).path) if scheme == "file" else uri
            return _LocalStore(Path(path))
        if scheme in ("http", "https"):
            return _HttpStore(uri, self.timeout)
        if scheme == "s3":
            return _S3Store(uri, s3 or S3Settings(), self.timeout)
        raise ArtifactError(f"{uri}: unsupported store {scheme!r} (file, https, s3)")

    def verify_model(self, namespace: str, model: ModelSpec, integrity: IntegritySpec) -> Verdict:
        """Whether ``model`` (``artifactUri`` against ``artifactDigest``) is the artifact
        the release names, reading the store as ``integrity`` says (policy
        ``spec.integrity``; ``namespace``: the release's, where its Secrets live). Never
        raises: a store that cannot be read is a failed verdict naming why."""
        s3 = integrity.s3
        settings = S3Settings(
            endpoint_url=s3.endpoint if s3 is not None else None,
            region=s3.region if s3 is not None else None,
        )
        return self.verify(model.artifact_uri, model.artifact_digest, settings)

    def verify(self, uri: str, want: str, s3: S3Settings | None = None) -> Verdict:
        """Whether the artifact at ``uri`` has the digest ``want`` (``sha256:<hex>``)."""
        try:
            store = self._store(uri, s3)
            single = store.single()
            if single is not None:
                with single() as f:
                    got = "sha256:" + file_digest(f)
                if got == want:
                    return Verdict(True, f"{uri}: {got}", got, 1)
                return Verdict(False, f"{uri} has digest {got}, want {want}", got, 1)
            return self._verify_directory(uri, want, store)
        except ArtifactError as err:
            return Verdict(False, f"could not read the artifact: {err}")

    def _verify_directory(self, uri: str, want: str, store: _Store) -> Verdict:
        sums: dict[str, str] = {}
        published: str | None = None
        for rel, opener in store.files():
            with opener() as f:
                if rel == MANIFEST_NAME:
                    published = f.read().decode()
                    continue
                sums[rel] = file_digest(f)
        if not sums:
            return Verdict(False, f"{uri}: no files (an empty directory has no digest)")
        got = digest_of(manifest(sums))
        if got == want:
            return Verdict(True, f"{uri}: {len(sums)} files, manifest {got}", got, len(sums))
        base = uri if uri.endswith("/") else uri + "/"
        if published is not None and digest_of(published) == want:
            expected = parse_manifest(published)
            wrong = [
                f"{base}{p}: sha256 {sums.get(p) or 'missing'}, want {expected[p]}"
                for p in sorted(expected) if sums.get(p) != expected[p]
            ] + [f"{base}{p}: not in the release" for p in sorted(set(sums) - set(expected))]
            return Verdict(False, "; ".join(wrong), got, len(sums))
        return Verdict(
            False,
            f"{uri}: the manifest of its {len(sums)} files has digest {got}, want {want} "
            f"(publish {MANIFEST_NAME} beside the files to have the differing file named)",
            got,
            len(sums),
        )
