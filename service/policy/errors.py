from datetime import UTC, datetime

from service.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ValidationFailed,
)


class AgreementNotFound(NotFound):
    title = "Agreement not found"
    slug = "agreement-not-found"


class AgreementExists(Conflict):
    title = "Agreement already exists"
    slug = "agreement-exists"


class AgreementRevoked(Conflict):
    title = "Agreement already revoked"
    slug = "agreement-revoked"


class NotFieldOwner(Forbidden):
    title = "Not the owner of these fields"
    slug = "not-field-owner"


class StaleAgreement(PreconditionFailed):
    title = "Agreement changed since it was read"
    slug = "stale-agreement"


class AgreementVersionRequired(PreconditionRequired):
    title = "If-Match required"
    slug = "if-match-required"


def _instant(time: datetime) -> str:
    return time.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SimulationWindowTooLarge(ValidationFailed):
    """A simulation whose window holds more audit entries than one simulation replays
    (``limit``, ``TELLONCE_SIMULATE_MAX_ENTRIES``): 422 at ``since``, naming ``fits_since``,
    the earliest ``since`` from which the window holds no more (when known)."""

    title = "Too many requests to replay"
    slug = "simulation-window-too-large"

    def __init__(self, limit: int, since: datetime | None, fits_since: datetime | None) -> None:
        self.limit = limit
        self.fits_since = fits_since
        window = f" since {_instant(since)}" if since is not None else ""
        remedy = "Send a later since" if fits_since is None else f"Send since {_instant(fits_since)} or later"
        super().__init__(
            f"The audit log holds more than {limit} recorded requests{window} for the fields this "
            f"draft changes; one simulation replays at most {limit} (TELLONCE_SIMULATE_MAX_ENTRIES). "
            f"{remedy}.",
            errors=[
                {
                    "loc": ["body", "since"],
                    "msg": f"more than {limit} requests to replay; {remedy[0].lower()}{remedy[1:]}",
                }
            ],
        )
