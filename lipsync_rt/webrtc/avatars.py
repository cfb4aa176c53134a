"""The avatars a server offers: named on the command line, prepared once at startup.

Clients choose an avatar by NAME; the paths stay on the server. Preparation (face boxes, landmarks,
face-encoder features) is blocking work, so it runs in an executor, once per avatar.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..assets import example_face
from ..errors import LipSyncError

if TYPE_CHECKING:
    from ..engine import Engine, MicroBatcher
    from ..pipeline import Avatar

EXAMPLE_FACE = example_face()
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_avatar_specs(specs: Sequence[str]) -> dict[str, Path]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}``; names are short and plain, files must exist."""
    avatars: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise LipSyncError(f"--avatar takes NAME=PATH, got {spec!r}")
        if not NAME.match(name):
            raise LipSyncError(f"avatar name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        if name in avatars:
            raise LipSyncError(f"avatar name {name!r} is given twice")
        if not Path(path).is_file():
            raise LipSyncError(f"avatar {name!r}: no such file: {path}")
        avatars[name] = Path(path)
    return avatars


def parse_idle_specs(specs: Sequence[str], avatars: dict[str, Path]) -> dict[str, Path]:
    """``--idle`` values: ``NAME=PATH`` for avatar NAME, or a bare ``PATH`` when there is one avatar."""
    idle: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(avatars) != 1:
                raise LipSyncError(f"--idle {spec!r}: say which avatar it is for, as NAME=PATH "
                                   f"(avatars: {', '.join(avatars) or 'none'})")
            name, path = next(iter(avatars)), spec
        if name not in avatars:
            raise LipSyncError(f"--idle {spec!r}: no avatar named {name!r} (avatars: {', '.join(avatars) or 'none'})")
        if name in idle:
            raise LipSyncError(f"--idle: avatar {name!r} is given two idle clips")
        if not Path(path).is_file():
            raise LipSyncError(f"idle clip for {name!r}: no such file: {path}")
        idle[name] = Path(path)
    return idle


def default_avatar_specs() -> dict[str, Path]:
    """One avatar, ``face``, from the example photo (package data, so any install has it)."""
    return {"face": EXAMPLE_FACE} if EXAMPLE_FACE.is_file() else {}


async def prepare_avatars(paths: dict[str, Path], engine: "Engine | MicroBatcher", *, fps: float = 25.0,
                          pads: tuple[int, int, int, int] = (0, 10, 0, 0),
                          loop: Optional[asyncio.AbstractEventLoop] = None,
                          idle: Optional[dict[str, Path]] = None) -> dict[str, "Avatar"]:
    """``Avatar.prepare`` each one in an executor, one after the other (they share the engine);
    ``idle`` names an idle clip per avatar."""
    from ..pipeline import Avatar

    loop = loop or asyncio.get_running_loop()
    idle = idle or {}
    prepared = {}
    for name, path in paths.items():
        try:
            prepared[name] = await loop.run_in_executor(
                None, lambda p=path, i=idle.get(name): Avatar.prepare(p, engine, fps=fps, pads=pads, idle=i))
        except LipSyncError as error:
            raise LipSyncError(f"avatar {name!r}: {error}") from None
    return prepared
