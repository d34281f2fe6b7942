"""The container image built by `make image` (hack/image/build.sh), mounted read-only and run with chroot.

`podman run` cannot work in this sandbox (crun cannot set rlimits), so the image is exercised the way a
runtime would run it, minus the isolation: `podman image mount` gives its root filesystem (read-only, like
`readOnlyRootFilesystem: true`), and its ENTRYPOINT + CMD run in it with chroot as the image's USER, with the
image's Env. Each run has a private mount namespace (unshare), so the bind mounts it needs (/proc, /dev, a
writable /tmp holding the kubeconfig) exist only for that process and vanish with it.

Nothing is skipped: without podman, or when the image cannot be built, the tests fail and say why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "image" / "build.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: tests of the container image (podman builds it; never skipped)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The first test to use the image may build it (`make test` builds it before, then this is a no-op): a cold
    # build makes a Debian base with debootstrap, which can take longer than the default per-test timeout.
    for item in items:
        if "image_ref" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(1800))


@dataclass(frozen=True)
class MountedImage:
    """An image's root filesystem and its run configuration (Entrypoint, Cmd, User, Env)."""

    ref: str
    root: Path
    config: dict[str, Any]
    labels: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "0:0")

    def command(self, args: Sequence[str] | None = None, binds: Mapping[str, str] | None = None,
                entrypoint: bool = True) -> list[str]:
        """argv running ENTRYPOINT + (args or CMD) in the image as its USER, with `binds` (host -> image path).

        With entrypoint=False, `args` is the whole command. Run it with env=`image.env` plus the settings:
        chroot resolves the command with the image's PATH.
        """
        args = list((self.config.get("Cmd") or []) if args is None else args)
        argv = [*(self.config.get("Entrypoint") or []), *args] if entrypoint else args
        mounts = {"/proc": "/proc", "/dev": "/dev", **(binds or {})}
        steps = [f"mount --bind {shlex.quote(src)} {shlex.quote(str(self.root) + dst)}" for src, dst in mounts.items()]
        run = ["chroot", f"--userspec={self.user}", str(self.root), *argv]
        script = " && ".join([*steps, "exec " + shlex.join(run)])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def _podman(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}",
                    pytrace=False)
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def image_ref() -> str:
    """The current image: built by hack/image/build.sh, which is a no-op when its inputs are unchanged."""
    missing = [tool for tool in ("podman", "unshare", "chroot") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make image-deps` installs podman and debootstrap",
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the image tests mount the image and chroot into it: they need root", pytrace=False)
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building the image failed ({BUILD}):\n{proc.stderr[-4000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def image(image_ref: str) -> Iterator[MountedImage]:
    """The image mounted read-only for the session; unmounted at the end whatever happens."""
    info = json.loads(_podman("image", "inspect", image_ref))[0]
    root = Path(_podman("image", "mount", image_ref))
    try:
        yield MountedImage(ref=image_ref, root=root, config=info["Config"], labels=info.get("Labels") or {})
    finally:
        subprocess.run(["podman", "image", "unmount", image_ref], capture_output=True, timeout=120, check=False)
