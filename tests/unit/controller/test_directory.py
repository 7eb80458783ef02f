"""The plane directory finds the CRs an event concerns (a gateway event names a planeID, a
Secret event a Secret) by looking only at those CRs: before, each event compared every
tenant's CR, and Secret events come from the whole cluster."""

from __future__ import annotations

from typing import Any

from workflowplane.controller.directory import PlaneDirectory, PlaneRef


class Watched(str):
    """A planeID or Secret name that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        type(self).compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def plane(namespace: str, name: str, plane_id: str, secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"planeID": plane_id}
    if secret:
        spec["clusterAgent"] = {"clientCA": {"secretKeyRef": {"name": secret, "key": "ca.crt"}}}
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def ref(namespace: str, name: str) -> PlaneRef:
    return PlaneRef("WorkflowPlane", namespace, name)


def test_an_event_looks_only_at_the_crs_it_concerns() -> None:
    directory = PlaneDirectory()
    for n in range(50):
        directory.remember(
            ref(f"t{n}", "wp"), plane(f"t{n}", "wp", Watched(f"p{n}"), Watched("ca"))
        )
    directory.remember(ref("mine", "wp"), plane("mine", "wp", "mine", "my-ca"))
    Watched.compared = 0
    assert directory.by_plane_id("mine") == [ref("mine", "wp")]
    assert directory.by_secret("mine", "my-ca") == [ref("mine", "wp")]
    assert directory.by_secret("elsewhere", "some-secret") == []
    assert Watched.compared == 0


def test_a_crs_new_plane_id_and_secret_replace_its_old_ones() -> None:
    directory = PlaneDirectory()
    directory.remember(ref("a", "wp"), plane("a", "wp", "p1", "ca-1"))
    directory.remember(ref("b", "wp"), plane("b", "wp", "p1", "ca-1"))
    directory.remember(ref("a", "wp"), plane("a", "wp", "p2", "ca-2"))
    assert directory.by_plane_id("p1") == [ref("b", "wp")]
    assert directory.by_plane_id("p2") == [ref("a", "wp")]
    assert directory.by_secret("a", "ca-1") == [] and directory.by_secret("a", "ca-2") == [
        ref("a", "wp")
    ]
    directory.remember(ref("a", "wp"), plane("a", "wp", "p2"))  # an inline CA now
    assert directory.by_secret("a", "ca-2") == []
    directory.forget(ref("b", "wp"))
    assert directory.by_plane_id("p1") == [] and directory.by_secret("b", "ca-1") == []
