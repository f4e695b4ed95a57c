"""Settings, read once from the environment (``BAYCHAT_*``). Defaults run embedded with no
configuration: SQLite and generated secrets under ``./data``, the in-process broker."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BAYCHAT_{name}", default)


def _int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _bool(name: str, default: bool) -> bool:
    return _env(name, "1" if default else "0").lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(f"BAYCHAT_{name}")
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("data")
    database_url: str = ""
    database_owner_url: str = ""
    broker_url: str = "memory://"
    keystore_dir: Path = Path("data/keys")
    master_keys: str = ""  # BAYCHAT_MASTER_KEYS, else a generated file in data_dir/secrets
    jwt_keys: str = ""  # BAYCHAT_JWT_KEYS, else a generated file in data_dir/secrets
    embedded_worker: bool = True
    migrate_on_start: bool = True
    jwt_issuer: str = "baychat"
    jwt_audience: str = "baychat"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 30 * 24 * 3600
    credential_cache_s: float = 30.0
    max_frame_bytes: int = 65536
    max_body_bytes: int = 16384
    max_http_body_bytes: int = 65536
    max_subscriptions: int = 200
    send_queue_frames: int = 1024
    send_buffer_bytes: int = 1_048_576  # unsent bytes per connection before slow consumer
    auth_timeout_s: float = 5.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    recovery_limit: int = 10_000
    password_time_cost: int = 2
    password_memory_kib: int = 19456
    password_parallelism: int = 1
    node_id: str = field(default_factory=lambda: secrets.token_hex(6))
    key_reload_s: float = 10.0
    backup_dir: Path | None = None  # BAYCHAT_BACKUP_DIR, else data_dir/backups
    backup_key: str = ""  # BAYCHAT_BACKUP_KEY (base64), else data_dir/secrets/backup.key
    backup_keep_days: int = 35
    backup_database_url: str = ""  # pg_dump's connection (BYPASSRLS); default: owner URL
    # Key-store backups (`baychat keys backup`): BAYCHAT_KEYSTORE_BACKUP_DIR, else
    # data_dir/keystore-backups (not under the database backups: they travel apart).
    keystore_backup_dir: Path | None = None
    keystore_backup_keep_days: int = 35
    # -- boundary hardening (docs/SECURITY.md, "Boundary hardening") ----------------------
    max_connections_per_user: int = 20  # per gateway process
    cors_origins: tuple[str, ...] = ()  # exact origins allowed to call the HTTP API cross-site
    # Exact origins whose pages may open /ws. Empty: no browser page may; clients that send no
    # Origin (bots, CLIs) must put a bearer token on the handshake.
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-* are believed
    hsts_max_age_s: int = 63_072_000
    log_format: str = "json"  # json | text
    log_level: str = "info"
    # Rate limits: `limits` notation ("5/minute", "100 per 10 seconds"). Counters live in
    # memory, or in Redis (shared by every gateway) when rate_limit_url or broker_url is redis.
    rate_limit_url: str = ""
    rate_limit_prefix: str = "baychat"
    rate_login_ip: str = "30/minute"
    rate_login_account: str = "20/minute"
    rate_login_account_ip: str = "5/minute"
    rate_refresh: str = "30/minute"
    rate_token_create: str = "10/minute"  # noqa: S105 - a rate, not a secret
    rate_http_write: str = "120/minute"
    rate_ws_connect: str = "60/minute"
    rate_ws_frames: str = "200/10 seconds"
    rate_publish_connection: str = "100/10 seconds"
    rate_publish_user: str = "300/10 seconds"
    rate_flood_strikes: int = 20  # rate-limited frames in a row before the socket is closed

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def backups_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def keystore_backups_dir(self) -> Path:
        if self.keystore_backup_dir is not None:
            return self.keystore_backup_dir
        return self.data_dir / "keystore-backups"

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("DATA_DIR", "data"))
        database_url = _env("DATABASE_URL", f"sqlite:///{data_dir / 'baychat.db'}")
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            database_owner_url=_env("DATABASE_OWNER_URL", database_url),
            broker_url=_env("BROKER_URL", "memory://"),
            keystore_dir=Path(_env("KEYSTORE_DIR", str(data_dir / "keys"))),
            master_keys=_env("MASTER_KEYS", ""),
            jwt_keys=_env("JWT_KEYS", ""),
            embedded_worker=_bool("EMBEDDED_WORKER", True),
            migrate_on_start=_bool("MIGRATE_ON_START", True),
            jwt_issuer=_env("JWT_ISSUER", "baychat"),
            jwt_audience=_env("JWT_AUDIENCE", "baychat"),
            access_ttl_s=min(_int("ACCESS_TTL", 900), 900),
            refresh_ttl_s=_int("REFRESH_TTL", 30 * 24 * 3600),
            credential_cache_s=_float("CREDENTIAL_CACHE", 30.0),
            max_frame_bytes=_int("MAX_FRAME_BYTES", 65536),
            max_body_bytes=_int("MAX_BODY_BYTES", 16384),
            max_http_body_bytes=_int("MAX_HTTP_BODY_BYTES", 65536),
            max_subscriptions=_int("MAX_SUBSCRIPTIONS", 200),
            send_queue_frames=_int("SEND_QUEUE_FRAMES", 1024),
            send_buffer_bytes=_int("SEND_BUFFER_BYTES", 1_048_576),
            auth_timeout_s=_float("AUTH_TIMEOUT", 5.0),
            ping_interval_s=_float("PING_INTERVAL", 20.0),
            ping_timeout_s=_float("PING_TIMEOUT", 20.0),
            recovery_limit=_int("RECOVERY_LIMIT", 10_000),
            password_time_cost=_int("PASSWORD_TIME_COST", 2),
            password_memory_kib=_int("PASSWORD_MEMORY_KIB", 19456),
            password_parallelism=_int("PASSWORD_PARALLELISM", 1),
            key_reload_s=_float("KEY_RELOAD_INTERVAL", 10.0),
            backup_dir=Path(_env("BACKUP_DIR", str(data_dir / "backups"))),
            backup_key=_env("BACKUP_KEY", ""),
            backup_keep_days=_int("BACKUP_KEEP_DAYS", 35),
            backup_database_url=_env("BACKUP_DATABASE_URL", ""),
            keystore_backup_dir=Path(
                _env("KEYSTORE_BACKUP_DIR", str(data_dir / "keystore-backups"))
            ),
            keystore_backup_keep_days=_int("KEYSTORE_BACKUP_KEEP_DAYS", 35),
            max_connections_per_user=_int("MAX_CONNECTIONS_PER_USER", 20),
            cors_origins=_list("CORS_ORIGINS", ()),
            allowed_origins=_list("ALLOWED_ORIGINS", ()),
            trusted_proxies=_list("TRUSTED_PROXIES", ()),
            hsts_max_age_s=_int("HSTS_MAX_AGE", 63_072_000),
            log_format=_env("LOG_FORMAT", "json"),
            log_level=_env("LOG_LEVEL", "info"),
            rate_limit_url=_env("RATE_LIMIT_URL", ""),
            rate_limit_prefix=_env("RATE_LIMIT_PREFIX", "baychat"),
            rate_login_ip=_env("RATE_LOGIN_IP", "30/minute"),
            rate_login_account=_env("RATE_LOGIN_ACCOUNT", "20/minute"),
            rate_login_account_ip=_env("RATE_LOGIN_ACCOUNT_IP", "5/minute"),
            rate_refresh=_env("RATE_REFRESH", "30/minute"),
            rate_token_create=_env("RATE_TOKEN_CREATE", "10/minute"),
            rate_http_write=_env("RATE_HTTP_WRITE", "120/minute"),
            rate_ws_connect=_env("RATE_WS_CONNECT", "60/minute"),
            rate_ws_frames=_env("RATE_WS_FRAMES", "200/10 seconds"),
            rate_publish_connection=_env("RATE_PUBLISH_CONNECTION", "100/10 seconds"),
            rate_publish_user=_env("RATE_PUBLISH_USER", "300/10 seconds"),
            rate_flood_strikes=_int("RATE_FLOOD_STRIKES", 20),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
