"""A PEM file holding a private key and its certificate, as Azure AD certificate credentials use.
Used by config validation (so `check-config` catches a bad file) and by the credential."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class CertificateKey:
    key: rsa.RSAPrivateKey
    thumbprint_s256: str  # base64url(SHA-256(DER)), the `x5t#S256` header Azure AD matches on

    def __repr__(self) -> str:
        return f"CertificateKey(x5t#S256={self.thumbprint_s256})"


def _der_kind(data: bytes) -> str | None:
    """What a binary (DER) file holds, from its first bytes: enough to say how to convert it."""
    if len(data) < 8 or data[0] != 0x30:  # every DER structure here is a SEQUENCE
        return None
    size = data[1]
    start = 2 if size < 0x80 else 2 + (size & 0x7F)
    inner = data[start : start + 3]
    if inner == b"\x02\x01\x03":  # PFX: version 3
        return "pkcs12"
    if inner[:1] == b"\x30":  # a certificate: SEQUENCE { tbsCertificate SEQUENCE ... }
        return "certificate"
    if inner[:2] == b"\x02\x01":  # a private key: version 0 (PKCS#1, PKCS#8)
        return "key"
    return None


_CONVERT = {
    "pkcs12": "a PKCS#12 (.pfx/.p12) file, not PEM: convert it with "
    "`openssl pkcs12 -in app.pfx -out app.pem -nodes` (key and certificate in one PEM file)",
    "certificate": "a DER certificate, not PEM, and no private key: convert with "
    "`openssl x509 -inform der -in app.cer -out cert.pem` and put the key's PEM beside it",
    "key": "a DER private key, not PEM, and no certificate: convert with "
    "`openssl pkey -inform der -in app.key -out key.pem` and add the certificate's PEM",
}


def load_certificate_key(pem: bytes, password: bytes | None = None) -> CertificateKey:
    """Parse key and certificate; ValueError says what is wrong, never what the key is."""
    if b"-----BEGIN" not in pem:
        kind = _der_kind(pem)
        if kind is not None:
            raise ValueError(_CONVERT[kind])
        raise ValueError(
            "not a PEM file (no -----BEGIN line): it must hold the key and certificate"
        )
    try:
        key = serialization.load_pem_private_key(pem, password)
    except TypeError:
        raise ValueError(
            "the private key is encrypted: set certificate_password_file or _env"
            if password is None
            else "the private key is not encrypted, but a password was given"
        ) from None
    except ValueError:
        raise ValueError("no readable private key (or a wrong password)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key must be RSA (Azure AD signs RS256 or PS256)")
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("no certificate in the PEM file") from None
    public = key.public_key().public_numbers()
    for cert in certificates:
        cert_key = cert.public_key()
        if isinstance(cert_key, rsa.RSAPublicKey) and cert_key.public_numbers() == public:
            der = cert.public_bytes(serialization.Encoding.DER)
            digest = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=")
            return CertificateKey(key, digest.decode())
    raise ValueError("no certificate in the file matches the private key")
