"""Control-server settings, from ``MYX_*`` environment variables and an optional env file.

Built in ``create_app()``/``main()``, never at import time.  The heartbeat and retry settings
keep the names of seed 001 §7.1.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from myx.server.errors import ConfigurationError

DEV_SECRET = "dev-insecure-secret-key-change-me"  # noqa: S105 - refused outside dev mode


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg, "myx") if xdg else Path.home() / ".local" / "share" / "myx"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MYX_", env_file=None, extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    secret_key: str = ""
    dev: bool = False
    auto_migrate: bool = False
    metrics_public: bool = False

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    public_url: str = ""

    # seed 001 §7.1
    agent_heartbeat_min_interval: float = Field(20.0, gt=0)
    agent_heartbeat_max_interval: float = Field(60.0, gt=0)
    agent_rpc_retry_max_attempts: int = Field(3, ge=0, le=10)
    agent_rpc_retry_base_delay: float = Field(1.0, ge=0)
    agent_rpc_timeout: float = Field(30.0, gt=0)

    heartbeat_concurrency: int = Field(64, ge=1)
    reinstall_after_failed_cycles: int = Field(5, ge=1)
    # Reinstall over SSH, by itself, an agent flagged by the heartbeats (seed 001 §3.2/§3.3), when
    # the host has SSH credentials; at most once per cooldown per host.
    auto_reinstall: bool = True
    auto_reinstall_cooldown: float = Field(1800.0, ge=0)
    log_poll_wait: float = Field(20.0, gt=0, le=60)
    command_retention_days: int = Field(30, ge=1)
    default_command_timeout: float = Field(300.0, gt=0)
    max_batch_concurrency: int = Field(256, ge=1)
    # The agent zipapp that installs upload (`make pyz` builds dist/myx-agent.pyz).
    agent_pyz: Path | None = None
    agent_install_timeout: float = Field(90.0, gt=0)
    install_concurrency: int = Field(10, ge=1)
    cert_renew_before_days: int = Field(30, ge=1)
    cert_check_interval: float = Field(12 * 3600.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql", "mysql", "mariadb")):
            raise ValueError("MYX_DATABASE_URL must be a sqlite, postgresql or mysql/mariadb URL")
        return value

    @model_validator(mode="after")
    def _intervals(self) -> Settings:
        if self.agent_heartbeat_max_interval < self.agent_heartbeat_min_interval:
            raise ValueError("MYX_AGENT_HEARTBEAT_MAX_INTERVAL must be >= MYX_AGENT_HEARTBEAT_MIN_INTERVAL")
        return self

    @property
    def db_url(self) -> str:
        """The SQLAlchemy async URL: the SQLite file in the data dir unless one was given."""
        from myx.server.db.migrate import async_url

        return async_url(self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'myx.db'}")

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "secret.key"

    def effective_secret(self) -> str:
        """The secret that keys encryption at rest: MYX_SECRET_KEY, else the data dir's secret.key.

        The dev default is refused outside dev mode.
        """
        if not self.secret_key and self.secret_file.exists():
            return self.secret_file.read_text().strip()
        if self.secret_key and self.secret_key != DEV_SECRET:
            if len(self.secret_key) < 16:
                raise ConfigurationError("MYX_SECRET_KEY must be at least 16 characters")
            return self.secret_key
        if self.dev:
            return DEV_SECRET
        raise ConfigurationError(
            f"MYX_SECRET_KEY is not set and {self.secret_file} does not exist: set it to a long random "
            "value (keep it safe: it encrypts agent tokens and SSH credentials), or run 'myx up' / "
            "'myx db upgrade', which generate one in the data directory"
        )
