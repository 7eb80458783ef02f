"""Build pinned Go programs once and cache them outside the repository.

Every binary the test environment runs but no registry ships (kube-apiserver, etcd, and the
systems a plane runs) is built here from its Go module: in a scratch module directory under
``<cache>/build/<name>``, into a ``.partial`` directory that is renamed into place only when
every step succeeded, so an interrupted build is resumed, never mistaken for a finished one.
A file lock makes concurrent callers (``wp test`` beside ``wpctl dev up``) wait for one build
instead of running two. Progress goes to stderr, one line per step with its duration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GO_MINIMUM = (1, 26)


class BuildError(RuntimeError):
    """A binary cannot be found or built; the message says what to do."""


def cache_root() -> Path:
    """``$WORKFLOWPLANE_CACHE``, else ``$XDG_CACHE_HOME/workflowplane`` (``~/.cache``)."""
    explicit = os.environ.get("WORKFLOWPLANE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "workflowplane"


def go_binary(purpose: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"Go is not installed (needed once to build {purpose} from its Go modules). "
            f"Install Go >= {GO_MINIMUM[0]}.{GO_MINIMUM[1]}."
        )
    return go


@dataclass(frozen=True)
class Step:
    """One command of a build, run in ``cwd`` (relative to the build's scratch directory).

    ``action`` replaces the command for steps that are easier in Python (copying a module's
    source or its manifests); it gets the scratch and the staging directory.
    """

    title: str
    args: Sequence[str] = ()
    cwd: str = "."
    env: dict[str, str] = field(default_factory=dict)
    action: Callable[[Path, Path], None] | None = None


@dataclass(frozen=True)
class GoBuild:
    """A recipe: where the result lives, which files it produces, how to make them.

    ``prepare`` writes the scratch module's files (go.mod, main.go) into the directory it is
    given; ``steps`` get ``{out}`` in their arguments replaced by the staging directory.
    """

    name: str
    version: str
    outputs: tuple[str, ...]
    steps: Callable[[str], list[Step]]
    prepare: Callable[[Path], None] = lambda _work: None
    group: str = "tools"

    @property
    def target(self) -> Path:
        return cache_root() / self.group / f"{self.name}-{self.version}"

    @property
    def work(self) -> Path:
        return cache_root() / self.group / "build" / f"{self.name}-{self.version}"

    def located(self, directory: Path | None = None) -> Path | None:
        """The directory holding every output, or None."""
        where = directory or self.target
        return where if all((where / out).is_file() for out in self.outputs) else None

    def ensure(self, *, log: bool = True) -> Path:
        """The cached outputs' directory, building them first when they are not there."""
        found = self.located()
        if found is not None:
            return found
        with _exclusive(self.work.with_name(self.work.name + ".lock")):
            found = self.located()  # another process may have built it while we waited
            if found is not None:
                return found
            return self._build(log)

    def _build(self, log: bool) -> Path:
        go = go_binary(self.name)
        if log:
            _say(f"Building {self.name} {self.version} from Go modules (once) into {self.target}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.prepare(self.work)
        staging = self.target.with_name(self.target.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        for step in self.steps(go):
            if step.action is not None:
                with _timed(step.title, self.work, log):
                    step.action(self.work, staging)
                continue
            args = [arg.replace("{out}", str(staging)) for arg in step.args]
            env = {key: value.replace("{out}", str(staging)) for key, value in step.env.items()}
            run_step(step.title, args, self.work / step.cwd, log, env)
        missing = [out for out in self.outputs if not (staging / out).is_file()]
        if missing:
            raise BuildError(f"building {self.name} produced no {', '.join(missing)}")
        if self.target.exists():
            shutil.rmtree(self.target)
        staging.rename(self.target)
        return self.target


def run_step(
    title: str, args: Sequence[str], cwd: Path, log: bool, env: dict[str, str] | None = None
) -> None:
    with _timed(title, cwd, log):
        result = subprocess.run(
            list(args),
            cwd=cwd,
            env={**os.environ, "CGO_ENABLED": "0", **(env or {})},
            stdout=sys.stderr if log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"{title} failed (exit {result.returncode}); see the output above")


@contextlib.contextmanager
def _timed(title: str, cwd: Path, log: bool) -> Iterator[None]:
    """The progress lines around one step: its title first, its duration when it succeeded."""
    started = time.monotonic()
    if log:
        _say(f"==> {title} (in {cwd})")
    yield
    if log:
        _say(f"    done in {time.monotonic() - started:.0f}s")


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
