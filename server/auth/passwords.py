"""Password hashing: argon2id with a per-hash random salt (argon2-cffi).

Login work is the same whether the user exists or not: an unknown user is checked against
a dummy hash, and both fail with the same error.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_CHARS = 1024
MIN_PASSWORD_CHARS = 8


class PasswordPolicyError(ValueError):
    pass


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        # OWASP's floor for argon2id is m=19 MiB, t=2, p=1; refuse anything weaker.
        if memory_kib < 19456 or time_cost < 2 or parallelism < 1:
            raise ValueError("argon2id parameters below OWASP's minimum")
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._dummy = self._hasher.hash("baychat dummy password for unknown users")

    @staticmethod
    def check_policy(password: str) -> None:
        if len(password) < MIN_PASSWORD_CHARS:
            raise PasswordPolicyError(f"password must be at least {MIN_PASSWORD_CHARS} chars")
        if len(password) > MAX_PASSWORD_CHARS:
            raise PasswordPolicyError(f"password must be at most {MAX_PASSWORD_CHARS} chars")

    async def hash(self, password: str) -> str:
        self.check_policy(password)
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True if ``password`` matches; with ``stored_hash=None`` burns the same time."""
        if len(password) > MAX_PASSWORD_CHARS:
            password = password[:MAX_PASSWORD_CHARS] + "\x00"  # same work, never matches
            stored_hash = None
        target = stored_hash or self._dummy
        ok: bool
        try:
            ok = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        return ok and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
