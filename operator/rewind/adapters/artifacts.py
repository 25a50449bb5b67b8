"""Artifact integrity: are the bytes in the store the bytes that were released, signed by
whom the policy trusts? (issue 13)

``model.artifactDigest`` is checked against the artifact itself and, when the policy's
``integrity.signature`` asks, ``model.signatureRef`` is verified against the same bytes with
the OpenSSF ``model-signing`` library, offline. Blocking I/O throughout: callers run
:meth:`ArtifactVerifier.verify_model` in a worker thread (``asyncio.to_thread``), never on
the event loop.

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

Signatures (``integrity.signature``)
------------------------------------
A signature is what ``model-signing`` (PyPI ``model-signing`` 1.1, CLI ``model_signing``)
writes: a Sigstore bundle (``model.signatureRef.type: sigstore-bundle``) whose DSSE payload
is an in-toto statement listing every file of the model with its hash, signed with a private
key or with a signing certificate::

    model_signing sign key --private_key signing.key --signature fraud-2.1.0.sig model/
    model_signing sign certificate --private_key signing.key \\
        --signing_certificate signing.crt --certificate_chain ca.crt \\
        --signature fraud-2.1.0.sig model/

Sign the directory (or the file) exactly as it is published, with its ``SHA256SUMS`` if it
has one, and store the signature *beside* it, not under its prefix (a file under it would be
part of the digest). The trust root is a PEM public key (``publicKey``, model-signing's key
method: elliptic-curve keys) or PEM certificates the signing certificate must chain to
(``certificateChain``: any certificate issued under them is trusted; its validity is checked
at its own ``notBefore``, as model-signing does), read from a Secret or ConfigMap key in the
release's namespace. Verification is offline: no Sigstore service, no transparency log.

The two checks compose over one read of the store: every file is hashed for the digest and,
when a signature is to be verified, written to a private temporary directory as it is read
(under ``ArtifactVerifier(scratch_dir=...)``, default ``TMPDIR``: it needs room for the
largest signed model), and ``model-signing`` verifies the signature against that copy, which
is deleted afterwards.
So the digest pins *which* artifact the release names, the signature says *who* produced it,
and both speak of the same bytes (a local path is verified in place, read twice).
``integrity.timeout`` bounds the whole verification: reading stops when it is spent.

Stores: ``file://`` URIs and plain local paths (tests, volumes), ``https://`` and ``http://``
(one file; a directory only through its published ``SHA256SUMS``), and ``s3://bucket/key``
(GetObject / ListObjectsV2 through boto3; ``integrity.s3``: an S3-compatible ``endpoint``
with path-style addressing, ``region``, and credentials from the Secret
``credentialsSecretRef`` names, else boto3's default chain (environment, web identity such
as IRSA, EKS Pod Identity, the instance's role), else anonymous requests).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

import boto3
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from rewind.api import IntegritySpec, KeySource, ModelSpec, SignatureType, parse_duration

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The file a release may publish at the top of a directory artifact: its manifest.
MANIFEST_NAME = "SHA256SUMS"
#: Keys of the Secret ``integrity.s3.credentialsSecretRef`` names.
ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)
#: A signature larger than this is refused unread (a bundle is a few KiB).
MAX_SIGNATURE_BYTES = 16 << 20
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact could not be read (not found, store unreachable, refused, timed out)."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification. ``ok`` False: ``message`` names the file (or the
    object, the signature, the Secret) that failed, and why."""

    ok: bool
    message: str
    digest: str = ""  # what was computed ("" when nothing could be read)
    files: int = 0


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 store: AWS when ``endpoint_url`` is None, an S3-compatible server
    otherwise (path-style addressing). Without an access key: boto3's default credential
    chain; nothing found there: anonymous requests."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None


class _Deadline:
    """The time left of one verification (``integrity.timeout``), in seconds."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def check(self, what: str) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise ArtifactError(f"{what}: timed out (integrity.timeout {self.seconds:g}s)")

    def bound(self, timeout: float) -> float:
        """``timeout`` (one request's), no later than the deadline (at least 1 ms)."""
        if self._end is None:
            return timeout
        return max(0.001, min(timeout, self._end - time.monotonic()))


Opener = Callable[[], IO[bytes]]


class _Store(Protocol):
    def files(self) -> Iterator[tuple[str, Opener]]: ...
    def single(self) -> Opener | None: ...
    def name(self, rel: str) -> str: ...


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

    def name(self, rel: str) -> str:
        return str(self.path / rel) if rel else str(self.path)

    def single(self) -> Opener | None:
        if self.path.is_file():
            return lambda: self.path.open("rb")
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: no such file or directory")
        return None

    def files(self) -> Iterator[tuple[str, Opener]]:
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            for name in names:
                full = Path(root) / name
                if full.is_file() and not full.is_symlink():
                    rel = full.relative_to(self.path).as_posix()
                    yield rel, functools.partial(_open_local, full)


class _HttpStore:
    def __init__(self, uri: str, timeout: float, deadline: _Deadline) -> None:
        self.uri, self.timeout, self.deadline = uri, timeout, deadline

    def name(self, rel: str) -> str:
        return self.uri + rel

    def _open(self, uri: str) -> IO[bytes]:
        try:
            response: IO[bytes] = urllib.request.urlopen(
                uri, timeout=self.deadline.bound(self.timeout)
            )
        except OSError as err:  # URLError, HTTPError, timeouts
            raise ArtifactError(f"{uri}: {err}") from err
        return response

    def single(self) -> Opener | None:
        return None if self.uri.endswith("/") else (lambda: self._open(self.uri))

    def files(self) -> Iterator[tuple[str, Opener]]:
        # HTTP cannot list: the published manifest says which files make the directory.
        with self._open(self.uri + MANIFEST_NAME) as f:
            text = f.read()
        yield MANIFEST_NAME, (lambda: io.BytesIO(text))
        for rel in parse_manifest(text.decode()):
            yield rel, functools.partial(self._open, self.uri + rel)


def _s3_error(where: str, err: Exception) -> ArtifactError:
    """``s3://b/k: HTTP 403 AccessDenied: Access Denied`` from a botocore error."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code, message = error.get("Code", ""), error.get("Message", "")
        text = " ".join(str(p) for p in ("HTTP", status, code) if p) if status else code
        return ArtifactError(f"{where}: {text}" + (f": {message}" if message else ""))
    return ArtifactError(f"{where}: {err}")


def s3_client(settings: S3Settings, timeout: float) -> S3Client:
    """A boto3 S3 client for ``settings`` (see :class:`S3Settings`); ``timeout``: seconds to
    connect and between two reads."""
    config = BotoConfig(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    if settings.access_key_id and settings.secret_access_key:
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            region_name=settings.region,
        )
    else:
        session = boto3.session.Session(region_name=settings.region)
        if session.get_credentials() is None:  # no identity anywhere: anonymous requests
            config = config.merge(BotoConfig(signature_version=UNSIGNED))
    region = settings.region or session.region_name or "us-east-1"
    return session.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=region, config=config
    )


class _S3Body(io.RawIOBase):
    """An object's body as a raw stream whose read errors name the object."""

    def __init__(self, body: Any, where: str) -> None:
        self._body, self._where = body, where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data: bytes = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as err:
            raise _s3_error(self._where, err) from err
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class _S3Store:
    """GetObject and ListObjectsV2 through boto3."""

    def __init__(self, uri: str, settings: S3Settings, timeout: float,
                 deadline: _Deadline) -> None:
        parsed = urlparse(uri)
        self.bucket, self.key = parsed.netloc, parsed.path.lstrip("/")
        self._client = s3_client(settings, deadline.bound(timeout))

    def name(self, rel: str) -> str:
        prefix = self.key if self.key.endswith("/") or not self.key else self.key + "/"
        return f"s3://{self.bucket}/{prefix}{rel}" if rel else f"s3://{self.bucket}/{self.key}"

    def _get(self, key: str) -> IO[bytes]:
        where = f"s3://{self.bucket}/{key}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as err:
            raise _s3_error(where, err) from err
        return io.BufferedReader(_S3Body(response["Body"], where), _CHUNK)

    def single(self) -> Opener | None:
        if self.key.endswith("/") or not self.key:
            return None
        return functools.partial(self._get, self.key)

    def files(self) -> Iterator[tuple[str, Opener]]:
        prefix = self.key if self.key.endswith("/") or not self.key else self.key + "/"
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [item.get("Key", "") for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as err:
            raise _s3_error(f"s3://{self.bucket}/{prefix}", err) from err
        for key in keys:
            if key and not key.endswith("/"):  # "directory" markers are not files
                yield key[len(prefix):], functools.partial(self._get, key)


# -- the verifier -------------------------------------------------------------------------


def _hash_file(opener: Opener, where: str, keep: Path | None, deadline: _Deadline) -> str:
    """sha256 hex of one file of the store; ``keep``: also written there as it is read."""
    h = hashlib.sha256()
    with opener() as f, (keep.open("wb") if keep is not None else contextlib.nullcontext()) as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if out is not None:
                try:
                    out.write(chunk)
                except OSError as err:  # a full scratch volume, mostly
                    raise ArtifactError(f"{where}: could not copy it to {keep} for the "
                                        f"signature check: {err}") from err
            deadline.check(where)
    return h.hexdigest()


def _safe_relative(rel: str, where: str) -> Path:
    """``rel`` as a relative path that stays under the copy's directory."""
    path = Path(rel)
    if not rel or path.is_absolute() or ".." in path.parts:
        raise ArtifactError(f"{where}: refused path {rel!r}")
    return path


class ArtifactVerifier:
    """Checks an artifact against its ``sha256:`` digest and, when the policy asks, its
    model-signing signature (blocking; see the module docstring).

    ``api_client``: reads the Secrets and ConfigMaps ``integrity`` names (S3 credentials, the
    signature's trust root) in the release's namespace; None: a policy that names one fails
    verification. ``timeout``: seconds for one request to a store or the API server.
    ``scratch_dir``: where a remote artifact is copied while its signature is verified
    (None: the system's temporary directory, ``TMPDIR``); it needs room for the largest
    signed model."""

    def __init__(self, api_client: client.ApiClient | None = None, *,
                 timeout: float = 30.0, scratch_dir: Path | None = None) -> None:
        self.timeout = timeout
        self.scratch_dir = scratch_dir
        self._core = client.CoreV1Api(api_client) if api_client is not None else None

    def _store(self, uri: str, s3: S3Settings | None, deadline: _Deadline) -> _Store:
        scheme = urlparse(uri).scheme
        if scheme in ("", "file"):
            path = unquote(urlparse(uri).path) if scheme == "file" else uri
            return _LocalStore(Path(path))
        if scheme in ("http", "https"):
            return _HttpStore(uri, self.timeout, deadline)
        if scheme == "s3":
            return _S3Store(uri, s3 or S3Settings(), self.timeout, deadline)
        raise ArtifactError(f"{uri}: unsupported store {scheme!r} (file, https, s3)")

    # -- Secrets and ConfigMaps ----------------------------------------------------------

    def _read(self, kind: str, namespace: str, name: str) -> tuple[dict[str, bytes], str]:
        """The data of a Secret or ConfigMap, decoded; and how to name it in a message."""
        what = f"{kind} {namespace}/{name}"
        if self._core is None:
            raise ArtifactError(f"{what}: no Kubernetes client to read it with")
        try:
            if kind == "Secret":
                secret = self._core.read_namespaced_secret(
                    name, namespace, _request_timeout=self.timeout
                )
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            else:
                cm = self._core.read_namespaced_config_map(
                    name, namespace, _request_timeout=self.timeout
                )
                data = {k: v.encode() for k, v in (cm.data or {}).items()}
                data |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
        except ApiException as err:
            reason = "not found" if err.status == 404 else f"HTTP {err.status} {err.reason}"
            if err.status == 403 and what.startswith("Secret"):
                # The chart grants get on Secrets only when asked to.
                reason += (": the operator may not read Secrets; install the chart with "
                           "integrity.readSecrets=true, or use workload identity (no "
                           "credentialsSecretRef) and a ConfigMap for the trust root")
            raise ArtifactError(f"{what}: {reason}") from err
        except Exception as err:  # the API server unreachable, a timeout
            raise ArtifactError(f"{what}: {type(err).__name__}: {err}") from err
        return data, what

    def _key(self, namespace: str, kind: str, name: str, key: str) -> bytes:
        data, what = self._read(kind, namespace, name)
        if key not in data:
            raise ArtifactError(f"{what} has no key {key}")
        return data[key]

    def _trust_root(self, namespace: str, source: KeySource) -> tuple[bytes, str]:
        ref = source.secret_key_ref or source.config_map_key_ref
        kind = "Secret" if source.secret_key_ref is not None else "ConfigMap"
        assert ref is not None  # KeySource validates exactly one
        return self._key(namespace, kind, ref.name, ref.key), f"{kind} {ref.name} key {ref.key}"

    def s3_settings(self, namespace: str, integrity: IntegritySpec) -> S3Settings:
        """The S3 settings of ``integrity.s3``, credentials read from its Secret. Raises
        :class:`ArtifactError` naming the Secret and key that are missing."""
        s3 = integrity.s3
        if s3 is None:
            return S3Settings()
        access = secret = token = None
        if s3.credentials_secret_ref is not None:
            data, what = self._read("Secret", namespace, s3.credentials_secret_ref.name)
            for key in (ACCESS_KEY_ID, SECRET_ACCESS_KEY):
                if not data.get(key):
                    raise ArtifactError(f"{what} (integrity.s3.credentialsSecretRef) has no "
                                        f"key {key}")
            access, secret = data[ACCESS_KEY_ID].decode(), data[SECRET_ACCESS_KEY].decode()
            token = data[SESSION_TOKEN].decode() if data.get(SESSION_TOKEN) else None
        return S3Settings(endpoint_url=s3.endpoint, region=s3.region, access_key_id=access,
                          secret_access_key=secret, session_token=token)

    # -- verification --------------------------------------------------------------------

    def verify_model(self, namespace: str, model: ModelSpec, integrity: IntegritySpec, *,
                     policy: str | None = None) -> Verdict:
        """Whether ``model`` (``artifactUri`` against ``artifactDigest``, and
        ``signatureRef`` when ``integrity.signature`` asks) is the artifact the release
        names, reading the store as ``integrity`` says (policy ``spec.integrity``;
        ``namespace``: the release's, where its Secrets and ConfigMaps live; ``policy``: the
        RolloutPolicy's name, for messages). Takes at most about ``integrity.timeout``.
        Never raises: a store, Secret or signature that cannot be read or does not verify is
        a failed verdict naming it and why."""
        try:
            budget = parse_duration(integrity.timeout)
            settings = self.s3_settings(namespace, integrity)
            signature = integrity.signature
            uri, want = model.artifact_uri, model.artifact_digest
            if signature is None:
                return self.verify(uri, want, settings, budget=budget)
            ref = model.signature_ref
            if ref is None:
                if signature.required:
                    by = f"policy {policy}" if policy else "the policy"
                    return Verdict(False, f"model.signatureRef is required by {by} "
                                          "(integrity.signature.required)")
                verdict = self.verify(uri, want, settings, budget=budget)
                return verdict if not verdict.ok else Verdict(
                    True, verdict.message + "; no signature (not required)",
                    verdict.digest, verdict.files)
            if ref.type != SignatureType.SIGSTORE_BUNDLE:
                return Verdict(False, f"signature {ref.uri}: type {ref.type} is not supported "
                                      f"(only {SignatureType.SIGSTORE_BUNDLE}, model-signing)")
            source = signature.public_key or signature.certificate_chain
            assert source is not None  # SignaturePolicy validates exactly one
            trust, trust_name = self._trust_root(namespace, source)
            return self.verify_signed(
                uri, want, ref.uri, trust,
                certificate_chain=signature.certificate_chain is not None,
                s3=settings, budget=budget, trust_name=trust_name,
            )
        except ArtifactError as err:
            return Verdict(False, str(err))
        except Exception as err:  # never raise into the controller
            return Verdict(False, f"verification failed: {type(err).__name__}: {err}")

    def verify(self, uri: str, want: str, s3: S3Settings | None = None, *,
               budget: float | None = None) -> Verdict:
        """Whether the artifact at ``uri`` has the digest ``want`` (``sha256:<hex>``);
        ``budget``: seconds for all of it (None: each request bounded by ``timeout``)."""
        deadline = _Deadline(budget)
        try:
            return self._digest(uri, want, self._store(uri, s3, deadline), None, deadline)
        except ArtifactError as err:
            return Verdict(False, f"could not read the artifact: {err}")

    def verify_signed(
        self, uri: str, want: str, signature_uri: str, trust: bytes, *,
        certificate_chain: bool = False, s3: S3Settings | None = None,
        budget: float | None = None, trust_name: str = "the trust root",
    ) -> Verdict:
        """Whether the artifact at ``uri`` has the digest ``want`` and the model-signing
        signature at ``signature_uri`` verifies it with ``trust``: a PEM public key, or
        (``certificate_chain``) PEM certificates the signing certificate must chain to.
        ``trust_name`` names the trust root in messages; ``budget`` as in :meth:`verify`."""
        deadline = _Deadline(budget)
        with tempfile.TemporaryDirectory(prefix="rewind-verify-", dir=self.scratch_dir) as tmp:
            work = Path(tmp)
            try:
                store = self._store(uri, s3, deadline)
                in_place = isinstance(store, _LocalStore)
                copy = work / "model"
                if not in_place:
                    copy.mkdir()
                    single = store.single()
                    if single is not None:  # a file keeps its name
                        copy = copy / (Path(urlparse(uri).path).name or "model")
                verdict = self._digest(uri, want, store, None if in_place else copy, deadline)
                if not verdict.ok:
                    return verdict
            except ArtifactError as err:
                return Verdict(False, f"could not read the artifact: {err}")
            model_path = store.path if isinstance(store, _LocalStore) else copy
            signature = work / "signature.json"
            try:
                self._fetch_signature(signature_uri, s3, signature, deadline)
            except ArtifactError as err:
                return Verdict(False, f"could not read the signature: {err}",
                               verdict.digest, verdict.files)
            root = work / "trust.pem"
            root.write_bytes(trust)
            deadline.check(f"signature {signature_uri}")
            try:
                _model_signing_verify(model_path, signature, root, certificate_chain)
            except Exception as err:  # model-signing raises ValueError and others
                reason = str(err).strip() or type(err).__name__
                return Verdict(
                    False,
                    f"signature {signature_uri} does not verify {uri} with {trust_name}: "
                    f"{reason}",
                    verdict.digest, verdict.files,
                )
            return Verdict(
                True, f"{verdict.message}; signature {signature_uri} verified with {trust_name}",
                verdict.digest, verdict.files,
            )

    def _fetch_signature(self, uri: str, s3: S3Settings | None, dest: Path,
                         deadline: _Deadline) -> None:
        store = self._store(uri, s3, deadline)
        single = store.single()
        if single is None:
            raise ArtifactError(f"{uri}: a directory, not a signature file")
        with single() as f:
            data = f.read(MAX_SIGNATURE_BYTES + 1)
        if len(data) > MAX_SIGNATURE_BYTES:
            raise ArtifactError(f"{uri}: larger than {MAX_SIGNATURE_BYTES} bytes")
        dest.write_bytes(data)

    def _digest(self, uri: str, want: str, store: _Store, keep: Path | None,
                deadline: _Deadline) -> Verdict:
        """The digest check over one read of ``store``; ``keep``: a copy of what was read
        is written there (a file's path, or a directory's)."""
        single = store.single()
        if single is not None:
            got = "sha256:" + _hash_file(single, uri, keep, deadline)
            if got == want:
                return Verdict(True, f"{uri}: {got}", got, 1)
            return Verdict(False, f"{uri} has digest {got}, want {want}", got, 1)
        return self._verify_directory(uri, want, store, keep, deadline)

    def _verify_directory(self, uri: str, want: str, store: _Store, keep: Path | None,
                          deadline: _Deadline) -> Verdict:
        sums: dict[str, str] = {}
        published: str | None = None
        for rel, opener in store.files():
            where = store.name(rel)
            target = None
            if keep is not None:
                target = keep / _safe_relative(rel, where)
                target.parent.mkdir(parents=True, exist_ok=True)
            if rel == MANIFEST_NAME:
                with opener() as f:
                    text = f.read()
                if target is not None:
                    target.write_bytes(text)
                published = text.decode()
                continue
            sums[rel] = _hash_file(opener, where, target, deadline)
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


def _model_signing_verify(model: Path, signature: Path, trust: Path, chain: bool) -> None:
    """model-signing's offline verification; raises (ValueError, mostly) when it fails."""
    # Imported here: model-signing pulls in sigstore and its protobuf models, which only a
    # policy with integrity.signature needs.
    from model_signing import verifying

    config = verifying.Config()  # type: ignore[no-untyped-call]  # unannotated __init__
    if chain:
        config.use_certificate_verifier(certificate_chain=[trust])
    else:
        config.use_elliptic_key_verifier(public_key=trust)
    config.verify(model, signature)

