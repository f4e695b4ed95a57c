"""argon2id with OWASP-or-better parameters, rehash on login, bounded input."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from server.auth.authority import scope_for_operator
from server.auth.passwords import MAX_PASSWORD_CHARS, PasswordPolicyError, Passwords
from tests.harness import PASSWORD, LiveServer


@pytest.fixture
def passwords() -> Passwords:
    return Passwords(time_cost=2, memory_kib=19456, parallelism=1)


async def test_hash_is_argon2id_with_a_salt_and_verifies(passwords: Passwords) -> None:
    first = await passwords.hash("a long enough password")
    second = await passwords.hash("a long enough password")
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second  # a fresh salt each time
    assert await passwords.verify(first, "a long enough password")
    assert not await passwords.verify(first, "a long enough passworD")


def test_parameters_below_owasp_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="OWASP"):
        Passwords(time_cost=1, memory_kib=19456, parallelism=1)
    with pytest.raises(ValueError, match="OWASP"):
        Passwords(time_cost=2, memory_kib=4096, parallelism=1)


async def test_input_length_is_bounded(passwords: Passwords) -> None:
    with pytest.raises(PasswordPolicyError):
        await passwords.hash("x" * (MAX_PASSWORD_CHARS + 1))
    with pytest.raises(PasswordPolicyError):
        await passwords.hash("short")
    stored = await passwords.hash("x" * MAX_PASSWORD_CHARS)
    assert not await passwords.verify(stored, "x" * (MAX_PASSWORD_CHARS + 5))


async def test_unknown_user_is_checked_against_a_dummy_and_fails(passwords: Passwords) -> None:
    assert not await passwords.verify(None, "anything at all")


async def test_login_rehashes_when_parameters_changed(server: LiveServer) -> None:
    tenant = await server.tenant()
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    user = await server.runtime.store.users.create(
        scope_for_operator(tenant.id), "old@example.com", weak.hash(PASSWORD), "member"
    )
    await server.login(tenant, user)
    stored = await server.runtime.store.users.get(scope_for_operator(tenant.id), user.id)
    assert stored.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    await server.login(tenant, user)  # and the new hash verifies
