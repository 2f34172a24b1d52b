"""Console settings, read from ``TELLONCE_CONSOLE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """How long a signed-in session lasts, and how big a results page is."""

    # hide_input_in_errors: a refusal (single sign-on half configured, say) must not echo
    # the settings it was given, the OpenID client secret among them.
    model_config = SettingsConfigDict(
        env_prefix="TELLONCE_CONSOLE_", extra="ignore", hide_input_in_errors=True
    )

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

    @model_validator(mode="after")
    def _oidc_settings_complete(self) -> ConsoleSettings:
        """Single sign-on with all four settings and a role map that reads, or none of them:
        otherwise the sign-in page would offer it and fail (500) on every attempt."""
        given = {
            "ISSUER": self.oidc_issuer,
            "CLIENT_ID": self.oidc_client_id,
            "CLIENT_SECRET": self.oidc_client_secret and self.oidc_client_secret.get_secret_value(),
            "ROLE_MAP": self.oidc_role_map,
        }
        missing = [f"TELLONCE_CONSOLE_OIDC_{name}" for name, value in given.items() if not value]
        if missing and len(missing) < len(given):
            raise ValueError(f"single sign-on needs {', '.join(missing)} as well")
        if self.oidc_role_map is not None and not missing:
            # Imported here: console/oidc.py imports these settings.
            from service.console.oidc import RoleMap

            RoleMap.load(self.oidc_role_map)
        return self


def get_console_settings(request: Request) -> ConsoleSettings:
    """The app's console settings; made from the environment the first time they are asked for."""
    found = getattr(request.app.state, "console_settings", None)
    if isinstance(found, ConsoleSettings):
        return found
    settings = ConsoleSettings()
    request.app.state.console_settings = settings
    return settings
