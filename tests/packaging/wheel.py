"""Build Switchyard's wheel from a copy of the working tree and install it into a fresh virtualenv.

The virtualenv lives outside the repository and holds only the wheel; the dependencies come from
the test run's own environment through a ``.pth`` line (``.pth`` files inside that directory are
not processed, so the repository's editable install stays invisible). That keeps the install to
seconds and needs no package index beyond what building the wheel itself needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Not needed to build the wheel; copying them would only cost time.
_SKIP_TOP = {"tests", "benchmarks", "docs"}


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process run from this install: no PYTHONPATH, its bin first."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env


def _source_files() -> list[str]:
    """Tracked files plus new files not ignored: what a clean clone (plus uncommitted work) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in listed.split("\0") if f and f.split("/", 1)[0] not in _SKIP_TOP]


def build_wheel(workdir: Path) -> Path:
    """Build the wheel from a copy of the tree (an in-tree build would leave build/ behind)."""
    source = workdir / "src"
    for name in _source_files():
        origin = REPO / name
        if origin.is_file():
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    dist = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        check=True,
        cwd=workdir,
    )
    (wheel,) = dist.glob("switchyard-*.whl")
    return wheel


def install_wheel(wheel: Path, target: Path) -> InstalledWheel:
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    purelib = Path(
        subprocess.run(
            [
                str(target / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_switchyard_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(target / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        cwd=target,
    )
    return InstalledWheel(wheel=wheel, venv=target)
