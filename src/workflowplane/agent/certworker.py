"""The agent's certificate work, done in a short-lived process of its own.

Creating the CA, issuing a leaf and reading a leaf's dates and URI SANs need ``cryptography``
(about 8 MiB once imported, never given back). The agent needs them at start, when its leaf is
re-issued and when a Secret or certificate file changes, so it runs them here: ``python -m
workflowplane.agent.certworker`` takes one JSON request on stdin, answers one JSON object on
stdout and exits. The agent itself keeps PEM bytes and the facts parsed here (``LeafFacts``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WORK_SECONDS = 60.0  # a key and two signatures; generous for a cold, throttled container
ANSWER_BYTES = 1 << 20


class CertWorkError(Exception):
    """The certificate work failed (bad PEM, a key it cannot use, the worker died)."""


@dataclass(frozen=True)
class PemPair:
    """A certificate and its private key, PEM; ``key_pem`` empty when the key is not ours."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class LeafFacts:
    """What the agent needs to know of its leaf: its validity and its URI SANs (consent)."""

    not_before: dt.datetime
    not_after: dt.datetime
    uris: tuple[str, ...]

    @classmethod
    def from_json(cls, facts: dict[str, Any]) -> LeafFacts:
        return cls(
            dt.datetime.fromisoformat(facts["not_before"]),
            dt.datetime.fromisoformat(facts["not_after"]),
            tuple(facts["uris"]),
        )


async def _ask(request: dict[str, Any]) -> dict[str, Any]:
    """One worker process for one request; CertWorkError with its reason when it fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            process.communicate(json.dumps(request).encode()), WORK_SECONDS
        )
    except (TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0 or len(out) > ANSWER_BYTES:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no reason given"]
        raise CertWorkError(f"certificate worker failed ({process.returncode}): {reason[0]}")
    answer: dict[str, Any] = json.loads(out)
    return answer


def _pair(answer: dict[str, Any], name: str) -> PemPair:
    return PemPair(answer[name]["cert"].encode(), answer[name]["key"].encode())


async def leaf_facts(cert_pem: bytes) -> LeafFacts:
    """The first certificate's validity and URI SANs."""
    answer = await _ask({"op": "facts", "cert": cert_pem.decode(errors="replace")})
    return LeafFacts.from_json(answer["facts"])


async def new_ca_and_leaf(
    plane_id: str, ca_days: float, cert_days: float, uris: Sequence[str]
) -> tuple[PemPair, PemPair, LeafFacts]:
    """A new CA and a leaf it signed carrying ``uris``."""
    answer = await _ask(
        {"op": "new", "plane": plane_id, "ca_days": ca_days, "days": cert_days, "uris": [*uris]}
    )
    return _pair(answer, "ca"), _pair(answer, "leaf"), LeafFacts.from_json(answer["facts"])


async def issue_leaf(
    ca: PemPair, plane_id: str, cert_days: float, uris: Sequence[str]
) -> tuple[PemPair, LeafFacts]:
    """A new leaf from the same CA, carrying ``uris``."""
    request = {
        "op": "issue",
        "ca": {"cert": ca.cert_pem.decode(), "key": ca.key_pem.decode()},
        "plane": plane_id,
        "days": cert_days,
        "uris": [*uris],
    }
    answer = await _ask(request)
    return _pair(answer, "leaf"), LeafFacts.from_json(answer["facts"])


# ---- the worker's side (this module run as a program) ----------------------------------------


def facts_of(cert_pem: bytes) -> dict[str, Any]:
    """``LeafFacts`` as JSON, computed here (the worker; tests)."""
    from workflowplane.pki import load_certificates, uri_sans  # noqa: PLC0415 - worker only

    (leaf, *_) = load_certificates(cert_pem)
    return {
        "not_before": leaf.not_valid_before_utc.isoformat(),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "uris": uri_sans(leaf),
    }


def _pem_json(cert_pem: bytes, key_pem: bytes) -> dict[str, str]:
    return {"cert": cert_pem.decode(), "key": key_pem.decode()}


def work(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request (``op``: facts, new, issue)."""
    from workflowplane import pki  # noqa: PLC0415 - worker only

    op = request.get("op")
    if op == "facts":
        return {"facts": facts_of(str(request["cert"]).encode())}
    plane, days = str(request["plane"]), dt.timedelta(days=float(request["days"]))
    uris = [str(uri) for uri in request["uris"]]
    if op == "new":
        ca_days = dt.timedelta(days=float(request["ca_days"]))
        ca = pki.generate_ca(f"cluster-agent-ca-{plane}", ca_days)
    elif op == "issue":
        ca = pki.KeyPair(request["ca"]["cert"].encode(), request["ca"]["key"].encode())
    else:
        raise ValueError(f"unknown operation {op!r}")
    leaf = pki.issue_certificate(ca, f"cluster-agent-{plane}", valid_for=days, uris=uris)
    return {
        "ca": _pem_json(ca.cert_pem, ca.key_pem),
        "leaf": _pem_json(leaf.cert_pem, leaf.key_pem),
        "facts": facts_of(leaf.cert_pem),
    }


def main() -> None:
    try:
        answer = work(json.loads(sys.stdin.buffer.read(ANSWER_BYTES)))
    except Exception as exc:  # noqa: BLE001 - the one line the agent reports
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
