"""Plane-side consent: allow-list entries, their URI SAN form, and which CR keys they allow."""

from __future__ import annotations

import pytest

from workflowplane.api.consent import (
    CONSENT_URI_PREFIX,
    UNRESTRICTED,
    ConsentError,
    consent_of,
    parse_allow_list,
)
from workflowplane.pki import generate_ca, issue_certificate, uri_sans


def test_entries_from_flags_env_and_configmaps_normalize() -> None:
    consent = parse_allow_list(["tenant-b", "org1/builder, /default", " "])
    assert consent.entries == {"tenant-b/*", "org1/builder", "/default"}


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("tenant-b/anything", True),
        ("org1/builder", True),
        ("org1/other", False),
        ("/default", True),
        ("/other", False),
        ("tenant-a/hijack", False),
    ],
)
def test_a_restricted_list_allows_exactly_its_entries(key: str, allowed: bool) -> None:
    consent = parse_allow_list(["tenant-b", "org1/builder", "/default"])
    assert consent.allows(key) is allowed


def test_no_list_allows_everyone() -> None:
    assert not UNRESTRICTED.restricted
    assert UNRESTRICTED.allows("tenant-a/hijack")


@pytest.mark.parametrize("bad", ["Tenant", "a/b/c", "a b", "/", "ns/", "ns/UPPER"])
def test_a_bad_entry_is_named_in_the_error(bad: str) -> None:
    with pytest.raises(ConsentError, match=f"allow-list entry {bad!r} is not"):
        parse_allow_list([bad])


def test_the_list_travels_in_the_leaf_and_comes_back() -> None:
    consent = parse_allow_list(["tenant-b", "/default"])
    leaf = issue_certificate(generate_ca("agent-ca"), "agent", uris=consent.uris())
    assert consent_of(uri_sans(leaf.certificate)) == consent


def test_a_leaf_without_consent_uris_is_unrestricted_and_other_uris_do_not_count() -> None:
    assert consent_of([]) == UNRESTRICTED
    assert consent_of(["spiffe://cluster/ns/x/sa/y"]) == UNRESTRICTED


def test_a_leaf_with_only_malformed_consent_allows_nobody() -> None:
    consent = consent_of([CONSENT_URI_PREFIX + "NOT VALID"])
    assert consent.restricted
    assert not consent.allows("tenant-b/x") and not consent.allows("/default")
