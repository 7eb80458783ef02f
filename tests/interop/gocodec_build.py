"""Build ``tests/interop/gocodec`` (OpenChoreo's frame types in a tiny Go program), cached.

The build copies the program into the kit's scratch directory, points its ``replace`` at the
peer's source (``workflowplane.testenv.peer.source_dir``) and is keyed by a hash of the program
and the peer's sources, so either changing rebuilds it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from workflowplane.testenv import peer
from workflowplane.testenv.gobuild import GoBuild, Step

HERE = Path(__file__).resolve().parent / "gocodec"
PEER_MODULE = "github.com/openchoreo/openchoreo"


def _version(source: Path) -> str:
    digest = hashlib.sha256(peer.source_hash(source).encode())
    for name in ("go.mod", "main.go"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def _prepare(work: Path) -> None:
    for name in ("go.mod", "main.go"):
        shutil.copyfile(HERE / name, work / name)


def recipe() -> GoBuild:
    source = peer.source_dir()

    def steps(go: str) -> list[Step]:
        mod = {"GOFLAGS": "-mod=mod -buildvcs=false"}
        return [
            Step(
                "point gocodec at the peer", [go, "mod", "edit", f"-replace={PEER_MODULE}={source}"]
            ),
            Step("resolve gocodec modules", [go, "mod", "tidy"], env=mod),
            Step("build gocodec", [go, "build", "-o", "{out}/gocodec", "."], env=mod),
        ]

    return GoBuild(
        name="gocodec",
        version=_version(source),
        outputs=("gocodec",),
        steps=steps,
        prepare=_prepare,
        group="peers",
    )


def ensure() -> Path:
    return recipe().ensure() / "gocodec"
