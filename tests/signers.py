"""Signing keys and certificates made on the spot, and model-signing's own signing API: what
a model publisher does with ``model_signing sign key|certificate``, for the tests that verify
signatures (unit and sandbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import model_signing.signing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Signer:
    """A signing key on disk, its public key in PEM, and how to sign with it."""

    key: Path
    public_pem: bytes
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()

    def sign(self, model: Path, signature: Path) -> None:
        """What ``model_signing sign key|certificate`` does, through its library API."""
        config = model_signing.signing.Config()
        if self.certificate is None:
            config.use_elliptic_key_signer(private_key=self.key)
        else:
            config.use_certificate_signer(private_key=self.key,
                                          signing_certificate=self.certificate,
                                          certificate_chain=list(self.chain))
        config.sign(model, signature)


def write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def key_signer(directory: Path, name: str = "signing") -> Signer:
    directory.mkdir(parents=True, exist_ok=True)
    key = write_key(directory / f"{name}.key")
    return Signer(directory / f"{name}.key", public_pem(key))


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def certificate_signer(directory: Path, ca_name: str = "Rewind test CA") -> tuple[Signer, bytes]:
    """A signing certificate issued by a fresh CA; and the CA's certificate in PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    key = write_key(directory / "leaf.key")
    leaf = certificate("model-publisher", key, ca_name, ca_key, ca=False)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return Signer(directory / "leaf.key", public_pem(key), directory / "leaf.crt",
                  (directory / "ca.crt",)), ca_pem
