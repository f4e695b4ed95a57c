"""Assembles one node from settings: key material, store, broker, node, services, worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from protocol.codes import CloseCode
from server.accounts import Accounts
from server.agents import AgentAdmin
from server.auth.authority import scope_for_system
from server.auth.credentials import CredentialCache
from server.auth.passwords import Passwords
from server.auth.service import AuthService
from server.auth.tokens import AccessTokens, SigningKeys
from server.broker.base import Broker, ControlEvent, open_broker
from server.chat import Chat, seed_source
from server.config import Settings
from server.keyreload import KeyReloader
from server.node import Node, shutdown_connections
from server.ratelimit import RateLimiter
from storage.engine import database_user
from storage.keys import MasterKeyring, TenantKeyStore
from storage.store import Store
from storage.worker import PersistenceLog, PersistenceWorker

_log = logging.getLogger("baychat.runtime")
TENANT_DELETED = "tenant_deleted"  # control event: forget the tenant's keys, close its sockets


def load_keyring(settings: Settings) -> MasterKeyring:
    if settings.master_keys:
        return MasterKeyring.from_env(settings.master_keys)
    return MasterKeyring.load_or_create(settings.secrets_dir / "master-keys.json")


def load_signing_keys(settings: Settings) -> SigningKeys:
    if settings.jwt_keys:
        return SigningKeys.from_json(settings.jwt_keys)
    return SigningKeys.load_or_create(settings.secrets_dir / "jwt-keys.json")


def open_store(settings: Settings, *, owner: bool = False) -> Store:
    url = settings.database_owner_url if owner else settings.database_url
    return Store.from_url(url, load_keyring(settings), TenantKeyStore(settings.keystore_dir))


def app_role(settings: Settings) -> str | None:
    """The role that migrations grant privileges to: the user of the application URL."""
    return database_user(settings.database_url)


def make_passwords(settings: Settings) -> Passwords:
    return Passwords(
        time_cost=settings.password_time_cost,
        memory_kib=settings.password_memory_kib,
        parallelism=settings.password_parallelism,
    )


@dataclass
class Runtime:
    settings: Settings
    store: Store
    broker: Broker
    node: Node
    auth: AuthService
    chat: Chat
    accounts: Accounts
    agents: AgentAdmin
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    worker: PersistenceWorker | None = None
    keys: KeyReloader | None = None
    limiter: RateLimiter = field(kw_only=True)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        limiter = RateLimiter(settings)  # first: a bad rate setting fails before any I/O
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if settings.migrate_on_start:
            owner_store = open_store(settings, owner=True)
            await owner_store.open(migrate_schema=True, app_role=app_role(settings))
            await owner_store.close()
        # Configuration errors first: once the store is open, a failed start would leave
        # its threads behind and the process would hang instead of exiting.
        passwords = make_passwords(settings)
        access = AccessTokens(
            load_signing_keys(settings),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_s=settings.access_ttl_s,
        )
        store = open_store(settings)
        await store.open()
        broker = open_broker(settings.broker_url, seed_source(store), node_id=settings.node_id)
        node = Node()
        await broker.start(node)
        credentials = CredentialCache(settings.credential_cache_s)
        node.add_control_listener(credentials.on_control)
        auth = AuthService(
            store,
            broker,
            passwords,
            access,
            refresh_ttl_s=settings.refresh_ttl_s,
            credentials=credentials,
        )
        chat = Chat(store, broker, recovery_limit=settings.recovery_limit)
        accounts = Accounts(store, broker, passwords)
        agents = AgentAdmin(store, broker)
        runtime = cls(settings, store, broker, node, auth, chat, accounts, agents, limiter=limiter)
        if settings.embedded_worker:
            runtime.start_worker(broker)  # type: ignore[arg-type]
        runtime.start_key_reloader(access)
        return runtime

    def start_key_reloader(self, access: AccessTokens) -> None:
        self.keys = KeyReloader(self.settings, self.store.cipher, access)
        self.tasks.append(asyncio.create_task(self.keys.run(), name="key-reloader"))
        self.node.add_control_listener(self._on_tenant_deleted)

    def _on_tenant_deleted(self, event: ControlEvent) -> None:
        if event.kind != TENANT_DELETED:
            return
        self.store.cipher.forget_tenant(event.tenant_id)
        self.node.close_where(
            lambda c: c.principal.tenant_id == event.tenant_id, CloseCode.REVOKED, "tenant deleted"
        )

    def start_worker(self, log: PersistenceLog) -> None:
        self.worker = PersistenceWorker(log, self.store, scope_for_system)
        self.tasks.append(asyncio.create_task(self.worker.run(), name="persistence-worker"))

    async def stop(self) -> None:
        await shutdown_connections(self.node, self.broker)
        worker_task = next((t for t in self.tasks if t.get_name() == "persistence-worker"), None)
        if self.worker is not None and worker_task is not None:
            # Whatever was published before shutdown is committed (and acked) first.
            await self.worker.drain(worker_task, timeout=10)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.close()
        await self.store.close()
        await self.limiter.close()
