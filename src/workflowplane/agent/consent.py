"""The plane owner's consent list as the agent reads it (``api.consent`` has the rules).

Flags and ``CLUSTER_AGENT_ALLOWED_NAMESPACES`` are fixed at start (``agent.command`` validates
them); the ConfigMap in the agent's namespace (key ``allowed``) is watched, so the owner can
change the list without restarting the agent. The effective list is the union. A ConfigMap
that does not parse keeps the last good list: a typo must neither open the agent to everyone
nor lock out the CRs it serves now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from workflowplane.agent.config import CONSENT_KEY
from workflowplane.agent.kube import AgentKube, core_path
from workflowplane.agent.tunnel import full_jitter_delay
from workflowplane.api.consent import UNRESTRICTED, Consent, ConsentError, parse_allow_list
from workflowplane.kits.failures import BASE_EXPECTED_ERRORS, Failure, report_failure

log = logging.getLogger(__name__)
WATCH_BACKOFF_SECONDS = (1.0, 30.0)  # first and longest wait before watching again


def union(*lists: Consent) -> Consent:
    """The effective list: every source's entries (none anywhere: unrestricted)."""
    return Consent(frozenset().union(*(item.entries for item in lists)))


def describe(consent: Consent) -> str:
    if not consent.restricted:
        return "none (any CR that trusts this agent's CA)"
    return ", ".join(sorted(consent.entries))


def configmap_entries(data: Mapping[str, str] | None) -> list[str]:
    """Key ``allowed``: entries separated by newlines or commas; ``#`` starts a comment."""
    text = (data or {}).get(CONSENT_KEY, "")
    return [line.split("#", 1)[0] for line in text.splitlines()]


def parse_configmap(data: Mapping[str, str] | None) -> Consent:
    """ConsentError naming the first bad entry."""
    return parse_allow_list(configmap_entries(data))


class ConfigMapConsent:
    """The ConfigMap's part of the list, kept current by a watch on that one object."""

    def __init__(
        self,
        kube: Callable[[], AgentKube],
        namespace: str,
        name: str,
        on_change: Callable[[], None],
    ) -> None:
        self._kube, self.namespace, self.name = kube, namespace, name
        self._on_change = on_change
        self.current = UNRESTRICTED
        self.unread = False  # the first read failed: the list is not known yet

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def apply(self, data: Mapping[str, str] | None) -> bool:
        """Take the ConfigMap's content (None: deleted); True when the list changed."""
        try:
            consent = parse_configmap(data)
        except ConsentError as exc:
            log.error(
                "%s key %r: %s; keeping the last good list (%s)",
                self.where,
                CONSENT_KEY,
                exc,
                describe(self.current),
            )
            return False
        self.unread = False
        if consent == self.current:
            return False
        log.info("%s now allows: %s", self.where, describe(consent))
        self.current = consent
        self._on_change()
        return True

    async def load(self) -> None:
        """The first read, before the agent connects; absent means no entries. A forbidden read
        (an agent deployed without this RBAC, e.g. by OpenChoreo's chart) leaves the list to
        flags and env, and says so. Any other failure (the API server unreachable, a 5xx, a
        timeout) leaves the list unknown (``unread``): the agent still connects (it answers
        502s), with the list its certificate carries standing for the ConfigMap's
        (``assume``), so it never re-issues its leaf to less than it was (flags alone,
        perhaps none: open to any CR that trusts its CA); the watch applies the ConfigMap's
        own once it can read it."""
        client = self._kube()
        try:
            configmap = await client.get(core_path(self.namespace, "configmaps", self.name))
        except BASE_EXPECTED_ERRORS as exc:
            status = exc.status if isinstance(exc, Failure) else 0
            if status == 403:
                self._unread(exc)
            elif status != 404:  # absent: no entries
                self.unread = True
                log.warning(
                    "cannot read %s (%s): until it can, the list the agent's certificate "
                    "carries stands for it",
                    self.where,
                    exc,
                )
            return
        finally:
            await client.close()
        self.apply(configmap.get("data"))

    def assume(self, carried: Consent) -> None:
        """While the ConfigMap is unread: the last list known, the one the leaf carries."""
        if self.unread:
            self.current = carried

    def _unread(self, exc: BaseException) -> None:
        log.warning(
            "may not read %s (%s): the consent list comes from flags and env only until it may "
            "(the agent needs get/list/watch on it; the workflow-plane chart grants them)",
            self.where,
            exc,
        )

    async def follow(self) -> None:
        """Watch the ConfigMap until cancelled; a broken watch is started again after a
        backoff (the first event of a new watch is the object as it is now)."""
        attempt = 0
        while True:
            try:
                await self._watch()
                attempt = 0
            except Exception as exc:  # noqa: BLE001 - the watch must outlive anything
                report_failure(log, f"watch of {self.where}", exc)
                attempt += 1
            await asyncio.sleep(full_jitter_delay(attempt, *WATCH_BACKOFF_SECONDS))

    async def _watch(self) -> None:
        client = self._kube()
        try:  # RBAC may name just this one object: watched by name
            async for kind, configmap in client.watch(
                core_path(self.namespace, "configmaps"), self.name
            ):
                self.apply(None if kind == "DELETED" else configmap.get("data"))
        finally:
            await client.close()
