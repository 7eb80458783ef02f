"""``./wp`` makes ``.venv`` with the fastest Python 3.11 it can tell (README, docs/performance.md
"The interpreter"): these run its ``pick_python`` against stand-in interpreters on PATH."""

from __future__ import annotations

import subprocess
from pathlib import Path

WP = Path(__file__).resolve().parents[3] / "wp"


def _function() -> str:
    lines = WP.read_text().splitlines()
    start = lines.index("pick_python() {")
    end = lines.index("}", start)
    return "\n".join(lines[start : end + 1])


def _stand_in(directory: Path, name: str, *, version_ok: bool, shared: bool) -> None:
    """A script answering the two checks ``pick_python`` makes: the version (and venv) check,
    and whether a libpython is mapped (exit 1: shared)."""
    script = directory / name
    script.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f"  *maps*) exit {1 if shared else 0} ;;\n"
        f"  *) exit {0 if version_ok else 1} ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def _picked(directory: Path) -> str:
    program = f"{_function()}\npick_python\n"
    result = subprocess.run(
        ["/bin/bash", "-c", program],
        env={"PATH": f"{directory}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_a_static_interpreter_is_taken_before_a_shared_one_found_earlier(tmp_path: Path) -> None:
    _stand_in(tmp_path, "python3.11", version_ok=True, shared=True)
    _stand_in(tmp_path, "python3", version_ok=True, shared=False)
    assert _picked(tmp_path) == "python3"


def test_the_first_static_python_311_is_taken(tmp_path: Path) -> None:
    _stand_in(tmp_path, "python3.11", version_ok=True, shared=False)
    _stand_in(tmp_path, "python3", version_ok=True, shared=False)
    assert _picked(tmp_path) == "python3.11"


def test_an_interpreter_that_is_not_311_or_cannot_make_a_venv_is_passed(tmp_path: Path) -> None:
    _stand_in(tmp_path, "python3.11", version_ok=False, shared=False)
    _stand_in(tmp_path, "python3", version_ok=True, shared=False)
    assert _picked(tmp_path) == "python3"
