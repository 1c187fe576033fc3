"""Where the aliases point, and the record of every move: who, why, when, on the version itself.

Each change is a version tag ``raylora.alias.<UTC time>`` holding ``{alias, change: set|removed, by, why,
when}``; the registered model's tag ``raylora.champion_history`` lists the champions in order, which
``rollback`` walks back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pipelines.register.alias_lock import AliasLock, who
from pipelines.tracking import Registry

EVENT_TAG_PREFIX = "raylora.alias."
CHAMPION_HISTORY_TAG = "raylora.champion_history"
HISTORY_KEPT = 200  # champions remembered for rollback (a tag value has a size limit)


def record(registry: Registry, name: str, version: str, alias: str, change: str, why: str) -> None:
    now = datetime.now(UTC)
    event = {"alias": alias, "change": change, "by": who(), "why": why, "when": now.isoformat()}
    registry.set_version_tag(name, version, EVENT_TAG_PREFIX + now.strftime("%Y%m%dT%H%M%S.%fZ"), json.dumps(event))


def alias_events(tags: dict[str, str]) -> list[dict[str, str]]:
    """A version's alias changes, oldest first."""
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(EVENT_TAG_PREFIX)]


def champion_history(registry: Registry, name: str) -> list[str]:
    return json.loads(registry.model_tags(name).get(CHAMPION_HISTORY_TAG, "[]"))


def move_alias(registry: Registry, lock: AliasLock, name: str, alias: str, version: str, why: str) -> None:
    """Point ``alias`` at ``version`` and record it on both versions; the lock is read back first."""
    before = registry.alias_version(name, alias)
    if before == version:
        return
    lock.check_held()
    registry.set_alias(name, alias, version)
    if before is not None:
        record(registry, name, before, alias, "removed", f"{why} (moved to version {version})")
    record(registry, name, version, alias, "set", why)


def crown(registry: Registry, lock: AliasLock, name: str, alias: str, version: str, why: str) -> None:
    """Make ``version`` the champion and remember it for rollback."""
    move_alias(registry, lock, name, alias, version, why)
    history = champion_history(registry, name)
    if history[-1:] != [version]:
        set_champion_history(registry, name, [*history, version])


def set_champion_history(registry: Registry, name: str, versions: list[str]) -> None:
    registry.set_model_tag(name, CHAMPION_HISTORY_TAG, json.dumps(versions[-HISTORY_KEPT:]))
