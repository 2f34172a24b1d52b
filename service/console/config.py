"""Console settings, read from ``TELLONCE_CONSOLE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """How long a signed-in session lasts, and how big a results page is."""

    model_config = SettingsConfigDict(env_prefix="TELLONCE_CONSOLE_", extra="ignore")

    # A session unused for this long is over; so is any session this old.
    idle_timeout_seconds: int = Field(default=15 * 60, ge=30)
    absolute_timeout_seconds: int = Field(default=8 * 60 * 60, ge=60)
    page_size: int = Field(default=25, ge=1, le=500)
    # Days the audit usage chart covers.
    chart_days: int = Field(default=14, ge=1, le=92)
    # Single sign-on with the organisation's OpenID provider (all of these, or none);
    # the client-secret sign-in stays for development. See console/oidc.py.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_role_map: Path | None = None
    oidc_scopes: str = "openid email profile groups"

    @property
    def oidc_configured(self) -> bool:
        return bool(self.oidc_issuer)


def get_console_settings(request: Request) -> ConsoleSettings:
    """The app's console settings; made from the environment the first time they are asked for."""
    found = getattr(request.app.state, "console_settings", None)
    if isinstance(found, ConsoleSettings):
        return found
    settings = ConsoleSettings()
    request.app.state.console_settings = settings
    return settings
