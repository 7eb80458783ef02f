"""What OpenChoreo's chart has cert-manager issue for the agent: a self-signed leaf.

``Certificate`` with ``isCA: false``, ``usages: [client auth]``, RSA 2048, ``commonName`` the
planeID and organization OpenChoreo, from a ``selfSigned`` Issuer. cert-manager writes
``tls.crt``, ``tls.key`` and ``ca.crt`` (the same certificate) into Secret ``cluster-agent-tls``,
and no ``ca.key``.
"""

from __future__ import annotations

import base64
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def self_signed_leaf(plane_id: str, days: int = 90) -> tuple[bytes, bytes]:
    """(tls.crt, tls.key) PEM, as cert-manager's selfSigned issuer makes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenChoreo"),
            x509.NameAttribute(NameOID.COMMON_NAME, plane_id),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def secret_data(plane_id: str) -> dict[str, str]:
    """The Secret's ``data`` (base64) as cert-manager writes it: ca.crt == tls.crt."""
    cert, key = self_signed_leaf(plane_id)
    encode = base64.b64encode
    return {
        "tls.crt": encode(cert).decode(),
        "tls.key": encode(key).decode(),
        "ca.crt": encode(cert).decode(),
    }
