"""The alias lock: one registration, promotion or rollback at a time decides where ``champion`` points.

    with AliasLock(registry, "raylora-demo", ttl_s=600, wait_s=900) as lock:
        ...read the champion, decide...
        lock.check_held()          # read back right before an alias moves
        registry.set_alias(...)

MLflow has no compare-and-set on aliases, so the decision is serialised through the registry itself, which
makes it hold across hosts: the lock is a registered model ``<name>.alias-lock`` whose creation is atomic (the
store's names are unique; a second create fails). It carries its owner and an expiry; a lock whose holder died
is taken over once expired. Before an alias moves, the holder reads the lock back and stops if it lost it.
"""

from __future__ import annotations

import getpass
import os
import random
import socket
import time
import uuid
from types import TracebackType

from pipelines.errors import StageError
from pipelines.tracking import Registry, RegistryNotFound

LOCK_SUFFIX = ".alias-lock"
OWNER_TAG, EXPIRES_TAG = "owner", "expires_at"


def who() -> str:
    """The person and machine behind a change, as recorded on the versions."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class AliasLock:
    def __init__(self, registry: Registry, model_name: str, *, ttl_s: float, wait_s: float) -> None:
        self.registry, self.name = registry, model_name + LOCK_SUFFIX
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self.owner = f"{who()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> AliasLock:
        deadline = time.monotonic() + self.wait_s
        while not self.registry.create_model(self.name, {OWNER_TAG: self.owner,
                                                         EXPIRES_TAG: str(time.time() + self.ttl_s)}):
            self.break_if_expired()
            if time.monotonic() > deadline:
                raise StageError(f"the alias lock {self.name} stayed held by {self.holder()} for "
                                 f"{self.wait_s:g}s: wait for it, or raise register.lock_wait_s")
            time.sleep(random.uniform(0.2, 0.6))  # jittered, so waiters do not retry in step
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.holder() == self.owner:
            self.registry.delete_model(self.name)

    def holder(self) -> str | None:
        try:
            return self.registry.model_tags(self.name).get(OWNER_TAG)
        except RegistryNotFound:
            return None

    def break_if_expired(self) -> None:
        """Remove a lock past its expiry (its holder died); only the lock as read, never a newer one."""
        try:
            tags = self.registry.model_tags(self.name)
        except RegistryNotFound:
            return
        if float(tags.get(EXPIRES_TAG, "inf")) < time.time() and self.holder() == tags.get(OWNER_TAG):
            print(f"raylora register: the alias lock of {tags.get(OWNER_TAG)} expired; taking it over", flush=True)
            self.registry.delete_model(self.name)

    def check_held(self) -> None:
        """Read the lock back before an alias moves: still ours and not expired, or stop."""
        try:
            tags = self.registry.model_tags(self.name)
        except RegistryNotFound:
            tags = {}
        if tags.get(OWNER_TAG) != self.owner or float(tags.get(EXPIRES_TAG, "0")) < time.time():
            raise StageError(f"lost the alias lock {self.name} (held {self.ttl_s:g}s at most): no alias moved; "
                             "raise register.lock_ttl_s and run again")
