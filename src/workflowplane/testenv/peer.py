"""Build OpenChoreo's Go ``cluster-agent`` and ``cluster-gateway``, the peer we interoperate with.

The peer's source is a read-only copy of OpenChoreo's tree beside the repository
(``<repo>/../shared/peers/openchoreo``, or ``$WORKFLOWPLANE_PEER_SRC``). It is copied into the
build's scratch directory first, so Go never writes next to it (its module may want go.sum
entries, and a root-owned process could otherwise change the shared tree). The cache is keyed
by a hash of the source files that go into the binaries, so an edited peer is rebuilt and an
unchanged one never is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from workflowplane.testenv.gobuild import BuildError, GoBuild, Step

PEER_SRC_ENV = "WORKFLOWPLANE_PEER_SRC"
BINARIES = ("cluster-agent", "cluster-gateway")
_BUILD_INPUTS = ("go.mod", "go.sum")


@dataclass(frozen=True)
class PeerBinaries:
    agent: Path
    gateway: Path
    source: Path


def source_dir() -> Path:
    """``$WORKFLOWPLANE_PEER_SRC``, else ``../shared/peers/openchoreo`` beside the repository."""
    explicit = os.environ.get(PEER_SRC_ENV)
    if explicit:
        return Path(explicit)
    repo = Path(__file__).resolve().parents[3]
    return repo.parent / "shared" / "peers" / "openchoreo"


def _inputs(source: Path) -> list[Path]:
    """Every file that can change the binaries: the module files and all Go sources."""
    files = [source / name for name in _BUILD_INPUTS]
    files += sorted(p for p in source.rglob("*.go") if p.is_file())
    return files


def source_hash(source: Path) -> str:
    """A short digest of the peer's Go sources, names included (a rename rebuilds too)."""
    digest = hashlib.sha256()
    for path in _inputs(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _copy_source(source: Path, work: Path) -> None:
    """A writable copy of the peer in ``work/src`` (replaced whole, so deletions carry over)."""
    target = work / "src"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("install", "*.md", "LICENSE"))
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _steps(go: str) -> list[Step]:
    return [
        Step(
            f"build {name}",
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                "-s -w",
                "-o",
                f"{{out}}/{name}",
                f"./cmd/{name}",
            ],
            "src",
            # the copy's go.sum may lack entries Go wants to add; it is ours to change
            {"GOFLAGS": "-mod=mod -buildvcs=false"},
        )
        for name in BINARIES
    ]


def recipe(source: Path | None = None) -> GoBuild:
    """The build of the peer at ``source``, keyed by its sources' hash."""
    where = source or source_dir()
    if not (where / "go.mod").is_file():
        raise BuildError(
            f"OpenChoreo's peer source is not at {where} (no go.mod); "
            f"set {PEER_SRC_ENV} to its directory"
        )
    return GoBuild(
        name="openchoreo",
        version=source_hash(where),
        outputs=BINARIES,
        steps=_steps,
        prepare=lambda work: _copy_source(where, work),
        group="peers",
    )


def ensure(*, log: bool = True) -> PeerBinaries:
    """The peer's binaries, built first (minutes, once per source version) when not cached."""
    where = source_dir()
    built = recipe(where).ensure(log=log)
    return PeerBinaries(built / "cluster-agent", built / "cluster-gateway", where)


def build_if_present() -> None:
    """Build OpenChoreo's peer when its source is there; without it interop tests skip."""
    source = source_dir()
    if not (source / "go.mod").is_file():
        print(
            f"OpenChoreo peer source not found at {source} (set {PEER_SRC_ENV}); "
            "the interop tests will be skipped",
            file=sys.stderr,
        )
        return
    print(f"OpenChoreo peer binaries: {ensure().agent.parent}", file=sys.stderr)
