"""Plane-side consent: which plane CRs the owner of a workflow plane lets use its agent.

A CA certificate is public: anyone can put a plane's CA and planeID into a CR of their own.
So the plane's owner, in the plane cluster, lists the CRs that may use the agent, and the agent
carries that list as URI SANs in the leaf it issues from its own CA. Only the CA's key holder
can mint such a leaf, so the gateway can trust the list exactly as far as it trusts the CA.

Entries (the agent's ``--allowed-namespaces`` and friends): ``ns`` or ``ns/*`` for every
WorkflowPlane of a namespace, ``ns/name`` for one, ``/name`` for one ClusterWorkflowPlane,
``/*`` for all of them. A leaf with no consent SAN is unrestricted (the reference page's flows,
where the agent's owner and the CR's author are the same person).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

CONSENT_URI_PREFIX = "urn:openchoreo:workflowplane:allow:"
_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_ENTRY = re.compile(rf"^(?P<namespace>{_NAME}|\*)?/(?P<name>{_NAME}|\*)$")


class ConsentError(ValueError):
    """An allow-list entry that is not ``ns``, ``ns/*``, ``ns/name``, ``/name`` or ``/*``."""


@dataclass(frozen=True)
class Consent:
    """The CR keys an agent's owner allows; ``restricted`` False means anyone may use it."""

    entries: frozenset[str]

    @property
    def restricted(self) -> bool:
        return bool(self.entries)

    def allows(self, cr_key: str) -> bool:
        """Whether the CR with this key (``ns/name``, ``/name`` if cluster-scoped) may use it."""
        if not self.entries:
            return True
        namespace, _, name = cr_key.partition("/")
        return any(
            candidate in self.entries
            for candidate in (cr_key, f"{namespace}/*", f"*/{name}", "*/*")
        )

    def uris(self) -> list[str]:
        return [CONSENT_URI_PREFIX + entry for entry in sorted(self.entries)]


UNRESTRICTED = Consent(frozenset())


def normalize_entry(text: str) -> str:
    """``ns`` → ``ns/*``; everything else must already be a full entry."""
    entry = text.strip()
    if entry and "/" not in entry:
        entry = f"{entry}/*"
    if not _ENTRY.match(entry):
        raise ConsentError(
            f"allow-list entry {text!r} is not ns, ns/*, ns/name, /name or /* (lowercase DNS names)"
        )
    return entry


def parse_allow_list(items: Iterable[str]) -> Consent:
    """A list from flags, env (comma-separated) or a ConfigMap; empty items are skipped."""
    entries = {normalize_entry(part) for item in items for part in item.split(",") if part.strip()}
    return Consent(frozenset(entries))


def consent_of(uris: Iterable[str]) -> Consent:
    """The consent a leaf carries, from its URI SANs; malformed consent URIs allow nothing
    more (they are dropped), so a leaf with only malformed ones allows nobody."""
    found = [uri[len(CONSENT_URI_PREFIX) :] for uri in uris if uri.startswith(CONSENT_URI_PREFIX)]
    if not found:
        return UNRESTRICTED
    valid = {entry for entry in found if _ENTRY.match(entry)}
    return Consent(frozenset(valid or {"-/-"}))  # "-/-" matches no CR key: allow nobody
