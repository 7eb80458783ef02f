"""Certificates for the tunnel: CA and leaf generation, and per-CA client verification."""

from workflowplane.pki.certs import (
    MAX_BUNDLE_CERTIFICATES,
    CertificateRejected,
    KeyPair,
    certificate_count,
    describe_certificate,
    generate_ca,
    holds_key_of,
    is_pinned_identity,
    issue_certificate,
    issued_by,
    load_certificates,
    load_private_key,
    not_valid_after,
    sha256_fingerprint,
    uri_sans,
    verify_client_certificate,
)

__all__ = [
    "MAX_BUNDLE_CERTIFICATES",
    "CertificateRejected",
    "KeyPair",
    "certificate_count",
    "describe_certificate",
    "generate_ca",
    "holds_key_of",
    "is_pinned_identity",
    "issue_certificate",
    "issued_by",
    "load_certificates",
    "load_private_key",
    "not_valid_after",
    "sha256_fingerprint",
    "uri_sans",
    "verify_client_certificate",
]
