"""A person's decisions on the champion: promote a version (gated unless forced), roll back to the last one.

    raylora promote configs/demo.yaml 3 --reason "better on the support tickets"     # the gate must hold
    raylora promote configs/demo.yaml challenger --reason "..." --force              # a version or an alias
    raylora rollback configs/demo.yaml --reason "answers got longer"

Both run under the alias lock, record who, why and when on the versions, and keep the champion history that
rollback walks back.
"""

from __future__ import annotations

from pipelines.artifacts import Registration
from pipelines.config import RayloraConfig
from pipelines.errors import ConfigError
from pipelines.register.alias_lock import AliasLock
from pipelines.register.aliases import champion_history, crown, move_alias, set_champion_history
from pipelines.register.gate import decide, gate_set_key
from pipelines.register.stage import REGISTRATION_TAG, gate_eval_set, measured_on
from pipelines.tracking import Registry, RegistryNotFound


def registry_for(cfg: RayloraConfig) -> Registry:
    return Registry(cfg.tracking_uri, cfg.register.registry_uri)


def resolve_version(registry: Registry, name: str, version_or_alias: str) -> str:
    """``3`` or an alias (``challenger``, ``@challenger``) -> the version number, checked to exist."""
    if version_or_alias.isdigit():
        registry.version_tags(name, version_or_alias)
        return version_or_alias
    alias = version_or_alias.removeprefix("@")
    version = registry.alias_version(name, alias)
    if version is None:
        raise RegistryNotFound(f"registered model {name!r} has no alias {alias!r}")
    return version


def not_found(err: RegistryNotFound, cfg: RayloraConfig) -> ConfigError:
    return ConfigError(f"{err}: check register.model_name and the version or alias (registry "
                       f"{cfg.register.registry_uri or cfg.tracking_uri})")


def promote(cfg: RayloraConfig, version_or_alias: str, reason: str, force: bool = False) -> Registration:
    """Make a registered version the champion. The gate (measured on the gate set, like with like) must hold
    against the current champion unless ``force``; the person's reason is recorded either way."""
    r = cfg.register
    registry = registry_for(cfg)
    try:
        version = resolve_version(registry, r.model_name, version_or_alias)
        status = registry.version_tags(r.model_name, version).get(REGISTRATION_TAG, "not registered by raylora")
        if status != "complete":
            raise ConfigError(f"version {version} of {r.model_name} is not a complete registration ({status}): "
                              "register the adapter again and promote the new version")
        with AliasLock(registry, r.model_name, ttl_s=r.lock_ttl_s, wait_s=r.lock_wait_s) as lock:
            champion = registry.alias_version(r.model_name, r.champion_alias)
            if champion == version:
                return Registration(r.model_name, version, [r.champion_alias], False,
                                    f"version {version} is already {r.champion_alias}", champion)
            if force:
                why = f"promoted by hand, gate not checked (--force): {reason}"
            else:
                gate_set = gate_eval_set(cfg)
                set_key = gate_set_key(cfg, gate_set)
                theirs = measured_on(registry, cfg, champion, gate_set, set_key) if champion else None
                decision = decide(measured_on(registry, cfg, version, gate_set, set_key), theirs, r, champion)
                if not decision.promote:
                    raise ConfigError(f"version {version} does not pass the gate ({decision.reason}): pass --force "
                                      "to promote it anyway")
                why = f"promoted by hand: {reason} (gate: {decision.reason})"
            crown(registry, lock, r.model_name, r.champion_alias, version, why)
    except RegistryNotFound as err:
        raise not_found(err, cfg) from err
    return Registration(r.model_name, version, [r.champion_alias], True, why, version)


def rollback(cfg: RayloraConfig, reason: str | None = None) -> Registration:
    """Point ``champion`` back at the previous champion (the one before it in the champion history)."""
    r = cfg.register
    registry = registry_for(cfg)
    try:
        with AliasLock(registry, r.model_name, ttl_s=r.lock_ttl_s, wait_s=r.lock_wait_s) as lock:
            current = registry.alias_version(r.model_name, r.champion_alias)
            if current is None:
                raise RegistryNotFound(f"registered model {r.model_name!r} has no alias {r.champion_alias!r}")
            history = champion_history(registry, r.model_name)
            while history and history[-1] == current:
                history.pop()
            if not history:
                raise ConfigError(f"version {current} is the first {r.champion_alias} of {r.model_name}: there is "
                                  "no previous one to roll back to (promote a version instead)")
            previous = history[-1]
            registry.version_tags(r.model_name, previous)  # it must still exist
            why = f"rollback from version {current}" + (f": {reason}" if reason else "")
            move_alias(registry, lock, r.model_name, r.champion_alias, previous, why)
            set_champion_history(registry, r.model_name, history)
    except RegistryNotFound as err:
        raise not_found(err, cfg) from err
    return Registration(r.model_name, previous, [r.champion_alias], True, why, previous)
