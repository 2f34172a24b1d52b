"""The webhook dispatcher: outbox events -> deliveries -> signed POSTs, retried, then dead.

Each cycle it
0. turns new audit entries into access notices in the outbox, and releases held ones
   (``notices.py``);
1. fans out: for every webhook subscription, turns the outbox events after its
   ``fanout_position`` that touch its fields into ``pending`` deliveries;
2. claims due deliveries (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
   dispatchers never hold the same attempt; SQLite has one writer and one dispatcher);
3. for each: re-checks the policy with the citizen's current status (field changes),
   checks the target's addresses again (DNS rebinding; every target at once, each
   resolution within ``TELLONCE_WEBHOOK_TIMEOUT_SECONDS``), audits, signs to the Standard
   Webhooks spec and POSTs. After a rotation of the subscription's secret, and until its
   overlap ends, the old secret signs too: ``webhook-signature`` carries both values,
   space separated, the new one first.

A 2xx answer delivers; only an answer's status and headers are read, never its body, and
``TELLONCE_WEBHOOK_TIMEOUT_SECONDS`` bounds the whole attempt. As the spec asks, a 410
Gone answer disables the subscription (nothing more is sent to it), and a ``Retry-After``
on a 429 or 503 answer is the least the next attempt waits. Any other failure is retried
after a jittered exponential backoff until the attempts run out; then the delivery is
``dead`` until redelivered.

A batch's attempts take turns: the first ``concurrency`` go one subscription's first, the
next one's first, and so on; then, when an attempt ends, its slot goes to a waiting delivery
of the receiver with the fewest attempts under way, so a receiver that answers slowly holds
no more slots than the others while they have deliveries waiting. Each result is written as
soon as it is known (those that come together in one transaction), not when the batch's
last answer comes: a fast receiver's deliveries are recorded as delivered while a slow
receiver's batch-mates are still out. Once one attempt to a receiver gets no answer (a
timeout, a refused connection, a TLS error) its deliveries later in the batch are not sent:
they are put back with the backoff of the one that failed, and, never having been sent,
count as no attempt (they are dead with it when it has used its last).

The loop (``run``) does not wait for a batch's last answer before it claims more: while
the deliveries it holds leave at least half the ``concurrency`` slots free, it claims due
deliveries for those slots and starts them, audited and sent as every batch is (the
``deliver`` entries in one group commit before any of them leaves; nothing leaves if that
fails). So a receiver that answers slowly, or not at all, holds no other receiver's new
event for its timeout. The batches under way share the slots and their fair turns, and
what an attempt that got no answer says of its receiver: for one timeout after it (at most
until that attempt is retried), the receiver's deliveries in any batch are not sent but put
back, as its batch-mates are, so the batches claimed one after another while a receiver is
down do not each send it their deliveries.

Delivery is at least once: a receiver de-duplicates on ``webhook-id``, which is the same
for every attempt of one (subscription, event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks import Webhook

from service import tracing
from service.audit.entries import (
    SERVICE_ACTOR,
    consent_delivery_entry,
    events_access_entry,
    notice_delivery_entry,
    subscription_change_entry,
)
from service.audit.schemas import AuditEntry
from service.auth import service as auth_service
from service.config import Settings
from service.db import engine_for, utcnow
from service.errors import FailureLog, ServiceUnavailable
from service.events import fanout, repository
from service.events.access import LivePolicy, OwnAuditSink
from service.events.models import ACCESS_RECORDED, CONSENT_CHANGED
from service.events.notices import NoticeWorker
from service.events.notifier import postgres_wakeups
from service.events.secrets import SecretUndecryptable, previous_context
from service.events.service import EventsRuntime, dumps_payload, event_data, field_owners, webhook_id
from service.events.targets import Pinned, UnsafeWebhookTarget, check_target, pinned
from service.records import public as records_public

logger = logging.getLogger("tellonce.events")
_T = TypeVar("_T")

_jitter = random.Random()  # noqa: S311  (spreads retries; not a secret)
_ERROR_LENGTH = 500
# The receiver no longer wants these webhooks: the subscription is disabled (the spec's advice).
GONE = 410
# Answers whose Retry-After the next attempt honours: rate limited, or down for a while.
RETRY_AFTER_STATUSES = frozenset({429, 503})


def backoff_seconds(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): exponential, capped, jittered.

    "Equal jitter": half the exponential delay, plus a random share of the other half, so
    retries from many deliveries spread out but still grow with each failure.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    jitter = (rng or _jitter).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110: delay-seconds or an HTTP-date),
    never negative; None when there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    # delay-seconds is ASCII digits: ``isdigit`` alone also takes "²" (a latin-1 byte),
    # which ``float`` refuses, and other scripts' digits.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # An HTTP-date is always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class Dispatcher:
    """One dispatcher loop. Several may run against one PostgreSQL database."""

    def __init__(
        self,
        runtime: EventsRuntime,
        *,
        batch_size: int = 100,
        concurrency: int = 20,
        client: httpx.AsyncClient | None = None,
        on_dead: Callable[[], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.batch_size = batch_size
        self._concurrency = max(1, concurrency)
        # The ``concurrency`` slots, shared by every batch under way; the loop's claimed
        # deliveries without a result yet (``run``), told when that number falls and when a
        # batch has ended.
        self._turns = _FairTurns(self._concurrency)
        self._in_hand = 0
        self._freed = asyncio.Event()
        self._ended = asyncio.Event()
        # Receivers whose attempt just got no answer, as every batch sees them (``_post``).
        self._unanswering: dict[str, _Unanswering] = {}
        # Batches or their results lost to the database: one line a run of them; likewise
        # the audit appends, which the audit writer refuses with ``ServiceUnavailable``
        # while it cannot commit (it logs why, a line a run of its own) or is not running.
        self._failures = FailureLog(logger, "webhook deliveries")
        self._audit_failures = FailureLog(
            logger, "webhook audit appends", expected=lambda exc: isinstance(exc, ServiceUnavailable)
        )
        self._own_client = client is None
        self._client = client
        if client is not None:
            tracing.instrument_httpx(client)
        # Told each time a delivery goes to the dead-letter state (the metrics count them).
        self.on_dead = on_dead
        self.attempts_made = 0
        self.notices = NoticeWorker(runtime.engine, runtime.terms)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client deliveries are sent with, made at the first delivery: making one
        loads the CA bundle (about 40 ms), which a process that never delivers need not pay.

        No redirects: a receiver must not bounce the service to another address. No kept
        connections: targets are pinned to their resolved address, so the pool is keyed by
        address, and an https connection made (its certificate checked) for one host name
        would otherwise carry a later delivery for another name on the same address."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
            )
            tracing.instrument_httpx(self._client)
        return self._client

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()

    # --- fan-out ----------------------------------------------------------------------

    async def fan_out(self) -> int:
        """Create deliveries for new events; return how many were created."""
        async with self.runtime.engine.begin() as conn:
            return await fanout.fan_out(conn)

    # --- claims and attempts ----------------------------------------------------------

    def _lease(self) -> timedelta:
        # Long enough for the targets' resolution and every wave of the batch's POSTs
        # (``concurrency`` at a time; a batch claimed while another is under way is no
        # bigger than the slots free, see ``_room``) to time out, and then some for the
        # result to be written. A claim that still outlives its lease (a slow audit log, a stalled
        # database) may be attempted again by another dispatcher: delivery is at least
        # once, deduplicated on webhook-id.
        waves = -(-self.batch_size // self._concurrency)
        return timedelta(seconds=self.settings.webhook_timeout_seconds * (waves + 1) + 30)

    async def claim(self) -> list[repository.ClaimedDelivery]:
        async with self.runtime.engine.begin() as conn:
            return await self._claim(conn, self.batch_size)

    async def _claim(self, conn: AsyncConnection, limit: int) -> list[repository.ClaimedDelivery]:
        now = utcnow()
        token = str(uuid.uuid4())
        previous = await repository.claim_due(
            conn, now=now, lease_until=now + self._lease(), limit=limit, token=token
        )
        return await repository.claimed(conn, previous, token) if previous else []

    async def deliver(
        self, batch: Sequence[repository.ClaimedDelivery], *, on_given: Callable[[int], None] | None = None
    ) -> None:
        """One attempt for each claimed delivery. Each result is written as soon as it is
        known: those known together in one transaction, while the rest are still out.
        ``on_given`` is told how many deliveries have their outcome, as they get it (and, if
        this is cancelled, those that never will)."""
        results = _Results(self._record, len(batch), self._failures, on_given)
        writer = asyncio.create_task(results.write())
        try:
            try:
                await self._deliver(batch, results.settle)
            except Exception as exc:
                # Never let one batch stop the loop; what has no outcome yet counts as failed
                # (``settle`` keeps an outcome already given, and ``_failure`` counts a dead
                # letter when it is made, so only those without one get it).
                self._failures.failed("webhook batch failed", exc)
                for item in batch:
                    if not results.settled(item):
                        results.settle(
                            item, self._failure(item, f"internal error: {type(exc).__name__}", None)
                        )
            await writer
        finally:
            # Only if this was cancelled (the process stopping): claims whose result was not
            # written run out with their lease and are attempted again (at least once).
            writer.cancel()
            if on_given is not None and results.ungiven:
                on_given(results.ungiven)
        self.attempts_made += len(batch) - results.unsent

    async def _deliver(self, batch: Sequence[repository.ClaimedDelivery], settle: _Settle) -> None:
        now = utcnow()
        async with self.runtime.engine.connect() as conn:
            decide = await self.runtime.policy.current(conn)
            statuses = await records_public.citizen_statuses(conn, [item.event.citizen_id for item in batch])
            disabled = await auth_service.disabled_clients(
                conn, {item.subscription.client_id for item in batch}
            )
        withheld: list[tuple[repository.ClaimedDelivery, AuditEntry]] = []
        sendable: list[tuple[repository.ClaimedDelivery, AuditEntry, list[str]]] = []
        for item in batch:
            subscription, event = item.subscription, item.event
            if subscription.status != "active":
                # Deleting or disabling a subscription cancels what it has queued, so this
                # should not happen; the rule holds at the point of sending all the same.
                settle(
                    item, {"status": "cancelled", "last_error": f"the subscription is {subscription.status}"}
                )
                continue
            if subscription.client_id in disabled:
                # Its client was disabled after subscribing: nothing more leaves for it, and
                # that is final (nothing is read or sent, so there is nothing to audit).
                settle(item, {"status": "withheld", "last_error": "the subscribing client is disabled"})
                continue
            if event.type == CONSENT_CHANGED:
                # The consumer's own agreement: the consent's status, audited as told.
                told = consent_delivery_entry(
                    time=now,
                    client_id=subscription.client_id,
                    department=subscription.department,
                    citizen_id=event.citizen_id,
                    owner=event.owner,
                    source=_origin(subscription.webhook_url),
                )
                sendable.append((item, told, event.fields))
                continue
            if event.type == ACCESS_RECORDED:
                # A notice to the citizen portal: the line of the citizen's access log it
                # carries is audited as the portal reading that log.
                notice = notice_delivery_entry(
                    time=now,
                    client_id=subscription.client_id,
                    department=subscription.department,
                    citizen_id=event.citizen_id,
                    source=_origin(subscription.webhook_url),
                )
                sendable.append((item, notice, event.fields))
                continue
            requested = [f for f in event.fields if f in subscription.fields]
            decisions = decide(
                subscription.department, requested, subscription.purpose, statuses.get(event.citizen_id), now
            )
            released = [f for f in requested if decisions[f].effect == "permit"]
            entry = events_access_entry(
                action="deliver",
                time=now,
                client_id=subscription.client_id,
                department=subscription.department,
                citizen_id=event.citizen_id,
                owners=[event.owner],
                requested=requested,
                decisions=decisions,
                purpose=subscription.purpose,
                status=200 if released else 403,
                citizen_status=statuses.get(event.citizen_id),
                # Where the event went: the receiver's origin, not its path, which may hold a token.
                source=_origin(subscription.webhook_url),
            )
            if released:
                sendable.append((item, entry, released))
            else:
                withheld.append((item, entry))
        if withheld:
            # The agreement no longer covers these: never sent, and that is final. The
            # reasons are in the audit entry, for the owners and auditors; the consumer's
            # deliveries list is told only that the policy withheld it.
            if await self._audited([entry for _item, entry in withheld]):
                for item, _entry in withheld:
                    settle(item, {"status": "withheld", "last_error": "withheld by policy"})
            else:
                for item, _entry in withheld:
                    settle(item, self._failure(item, "the audit log is unavailable", None))
        ready: list[tuple[repository.ClaimedDelivery, AuditEntry, str, Pinned]] = []
        secrets_by_subscription: dict[str, list[str]] = {}
        # Every target checked at once, each within the timeout: a host whose name servers
        # never answer holds its own deliveries, not the batch for a resolver timeout each.
        urls = list(
            dict.fromkeys(item.subscription.webhook_url or "" for item, _entry, _released in sendable)
        )
        checked = dict(zip(urls, await asyncio.gather(*(self._target(url) for url in urls)), strict=True))
        for item, entry, released in sendable:
            subscription = item.subscription
            target = checked[subscription.webhook_url or ""]
            if isinstance(target, str):
                settle(item, self._failure(item, f"target refused: {target}", None))
                continue
            signing = secrets_by_subscription.get(subscription.id) or self._secrets(subscription)
            if signing is None:
                settle(item, self._failure(item, "the signing secret could not be decrypted", None))
                continue
            secrets_by_subscription[subscription.id] = signing
            body = dumps_payload(event_data(item.event, released))
            ready.append((item, entry, body, target))
        if not ready:
            return
        # Durable before anything leaves the service; one group commit for the batch.
        if not await self._audited([entry for _item, entry, _body, _target in ready]):
            for item, _entry, _body, _target in ready:
                settle(item, self._failure(item, "the audit log is unavailable; nothing was sent", None))
            return
        # Audited as released before it was sent, whatever then became of the request (or
        # if it was not sent at all, see ``_post``): the deliveries list may name its event
        # and citizen from now on, as the audit trail does.
        released_at = utcnow()
        # Taken in turn, one subscription's first delivery, then the next one's, and so on:
        # the first ``concurrency`` attempts of the batch go to as many receivers as it has,
        # not all to the one whose events came first (which may be the one not answering);
        # after that, ``_FairTurns`` gives each slot that frees to the receiver with the
        # fewest attempts under way (in this batch and any other under way).
        ready = _taking_turns(ready, key=lambda entry: entry[0].subscription.id)
        unreachable: dict[str, _Unreachable] = {}

        async def attempt(item: repository.ClaimedDelivery, body: str, target: Pinned) -> None:
            signing = secrets_by_subscription[item.subscription.id]
            try:
                values = await self._post(item, body, signing, target, unreachable)
            except Exception as exc:
                # A bug outside the request (``_post`` keeps the request's own errors to
                # their attempt): this attempt fails alone. Leaving the gather would fail
                # its batch-mates whose requests are still out, and leave those requests
                # going on in slots the loop counts as free.
                self._failures.failed("webhook delivery %s failed", exc, item.id)
                values = self._failure(item, f"internal error: {type(exc).__name__}", None)
            settle(item, {**values, "released_at": released_at})

        attempts = [
            asyncio.ensure_future(attempt(item, body, target)) for item, _entry, body, target in ready
        ]
        try:
            await asyncio.gather(*attempts)
        finally:
            # Only if one broke all the same (``attempt`` keeps what it can to itself) or this
            # was cancelled: the others end with the batch, not on their own afterwards, in
            # slots the loop counts as free and with outcomes the batch has given up on.
            for task in attempts:
                task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)

    async def _audited(self, entries: list[AuditEntry]) -> bool:
        """Whether ``entries`` are durable in the audit log. A refusal (the writer could not
        commit, or is not running) is a line a run of them, as the database's absence is."""
        try:
            await self.runtime.audit.record(entries)
        except Exception as exc:
            self._audit_failures.failed("audit append for %d deliveries failed", exc, len(entries))
            return False
        self._audit_failures.succeeded()
        return True

    async def _target(self, url: str) -> str | Pinned:
        """Why ``url`` may not be called now, or the request pinned to the address that was
        checked: connecting to it, not to a fresh resolution, closes the DNS-rebinding gap."""
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                addresses = await check_target(
                    url, allow_private=self.settings.webhook_allow_private, resolver=self.runtime.resolver
                )
        except UnsafeWebhookTarget as exc:
            return str(exc)
        except TimeoutError:
            return f"the host {urlsplit(url).hostname} could not be resolved in time"
        except Exception as exc:
            # A resolver failing in a way it should not: this target's deliveries fail, not
            # the batch with every other receiver's.
            logger.error("webhook target check failed unexpectedly: %s", type(exc).__name__)
            return f"the host {urlsplit(url).hostname} could not be resolved"
        return pinned(url, addresses[0])

    def _secrets(self, subscription: repository.SubscriptionRow) -> list[str] | None:
        """The secrets that sign the subscription's deliveries now: its secret and, while a
        rotation's overlap lasts, the one it replaced; None if its secret does not open."""
        if subscription.secret_ciphertext is None:
            return None
        try:
            signing = [self.runtime.secret_box.open(subscription.secret_ciphertext, subscription.id)]
        except SecretUndecryptable:
            return None
        previous = subscription.previous_secret_ciphertext
        if previous is not None and _previous_signs(subscription, self.runtime.clock()):
            try:
                signing.append(self.runtime.secret_box.open(previous, previous_context(subscription.id)))
            except SecretUndecryptable:
                # The current secret still signs; a receiver still on the old one sees the
                # failures in its deliveries.
                logger.warning("subscription %s: its previous secret did not open", subscription.id)
        return signing

    async def _post(
        self,
        item: repository.ClaimedDelivery,
        body: str,
        secrets: list[str],
        target: Pinned,
        unreachable: dict[str, _Unreachable],
    ) -> dict[str, Any]:
        """One attempt, when the dispatcher's turns give it a slot. ``unreachable`` is shared
        by the batch: once an attempt to a receiver gets no answer (a timeout, a refused
        connection, a TLS error), that receiver's deliveries whose turn comes later in the
        batch are not sent (see ``_unsent``), so one receiver that does not answer holds the
        batch's last result for one timeout, not one for each of its deliveries. Nor are its
        deliveries in the other batches, for a while (``_unanswered_lately``), unless it
        answers another attempt meanwhile."""
        message_id = webhook_id(item.id)
        receiver = item.subscription.webhook_url or ""
        async with self._turns.turn(receiver):
            why_not = unreachable.get(receiver) or self._unanswered_lately(receiver, item)
            if why_not is not None:
                return self._unsent(item, why_not)
            # Timestamped and signed when its turn to be sent comes, not when the batch was
            # read: a receiver refuses a webhook-timestamp older than its tolerance (the
            # Standard Webhooks libraries allow 5 minutes), and a delivery may wait here
            # behind ``concurrency`` others for several timeouts.
            sent_at = utcnow()
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                # One ``v1,...`` value per secret, space separated, as the spec allows.
                "webhook-signature": " ".join(
                    Webhook(secret).sign(message_id, sent_at, body) for secret in secrets
                ),
                "user-agent": "tellonce-webhooks/1",
                **target.headers,
            }
            timeout = self.settings.webhook_timeout_seconds
            try:
                # The timeout bounds the whole attempt, not each read (httpx's own timeout
                # starts again with every byte, so a receiver trickling its answer could hold
                # the attempt past the claim's lease). Only the status and headers are read:
                # success is the status code, and an answer's body, however long, is never
                # taken into memory (leaving the block closes the connection).
                async with (
                    asyncio.timeout(timeout),
                    self.client.stream(
                        "POST",
                        target.url,
                        content=body.encode(),
                        headers=headers,
                        timeout=timeout,
                        extensions=target.extensions,
                    ) as response,
                ):
                    code = response.status_code
                    retry_after = response.headers.get("retry-after")
            except (TimeoutError, httpx.TimeoutException):
                why = "it did not answer in time"
                return self._unanswered(item, "the receiver did not answer in time", why, unreachable)
            except Exception as exc:
                if not isinstance(exc, httpx.HTTPError):
                    # Not one of httpx's errors (none is known to come from a URL the API
                    # accepts): this attempt fails alone, not the batch with it, whose other
                    # receivers' answers would be lost and their deliveries sent again. Only the
                    # error's type is logged: its text may hold the URL, whose path may hold a token.
                    logger.error("webhook delivery %s failed unexpectedly: %s", item.id, type(exc).__name__)
                kind = type(exc).__name__
                error, why = f"could not reach the receiver: {kind}", f"could not reach it: {kind}"
                return self._unanswered(item, error, why, unreachable)
        # It answers, whatever it said.
        self._unanswering.pop(receiver, None)
        if 200 <= code < 300:
            return {
                "status": "delivered",
                "delivered_at": utcnow(),
                "last_status_code": code,
                "last_error": None,
            }
        if code == GONE:
            # Final for this delivery; ``_record`` disables the subscription (see ``_gone``).
            return {
                "status": "cancelled",
                "last_status_code": code,
                "last_error": "the receiver answered 410 Gone; the subscription is disabled",
            }
        if code in RETRY_AFTER_STATUSES:
            wait = retry_after_seconds(retry_after, utcnow())
            if wait is not None:
                return self._failure(
                    item, f"the receiver answered {code} and asked to wait {wait:.0f} s", code, at_least=wait
                )
        return self._failure(item, f"the receiver answered {code}", code)

    def _unanswered(
        self, item: repository.ClaimedDelivery, error: str, why: str, unreachable: dict[str, _Unreachable]
    ) -> dict[str, Any]:
        """A failed attempt that got no answer; the receiver's deliveries whose turn comes
        later in the batch are not sent, for the reason ``why`` (the first such in the batch).
        Nor, if this one is to be retried, are those whose turn comes in any batch within a
        timeout from now and before that retry (``_unanswered_lately``)."""
        receiver = item.subscription.webhook_url or ""
        failed = self._failure(item, error, None)
        unreachable.setdefault(receiver, _Unreachable(why, failed))
        if failed["status"] == "pending":
            now = utcnow()
            rest = now + timedelta(seconds=self.settings.webhook_timeout_seconds)
            self._unanswering = {r: lately for r, lately in self._unanswering.items() if lately.until > now}
            self._unanswering[receiver] = _Unanswering(
                _Unreachable(why, failed), min(rest, failed["next_attempt_at"]), item.id
            )
        return failed

    def _unanswered_lately(self, receiver: str, item: repository.ClaimedDelivery) -> _Unreachable | None:
        """Why ``item`` is not sent though its batch has had no attempt to ``receiver`` go
        unanswered: one of another batch got no answer less than a timeout ago, and is
        retried later still. A batch claimed while the loop goes on is no bigger than the
        slots free, so it has no deliveries waiting their turn behind a failed attempt: without
        this, a receiver that is down would be sent every delivery of each batch claimed
        meanwhile, one slot and one timeout each. The retry of that attempt is sent."""
        lately = self._unanswering.get(receiver)
        if lately is None or lately.delivery_id == item.id or utcnow() >= lately.until:
            return None
        return lately.why

    def _unsent(self, item: repository.ClaimedDelivery, why: _Unreachable) -> dict[str, Any]:
        """A delivery not sent because another attempt to its receiver got no answer just
        before. It was never sent, so it is no attempt: the one its claim counted is given
        back, and its ``last_attempt_at`` is again that of its last attempt (if any), not the
        claim's time. It is due again when the attempt that failed is, so a receiver that stays down
        is tried at that one's growing backoff, not at once by each delivery left behind it.
        If that attempt was the last its delivery had, the receiver has not answered through
        the whole retry span, and this delivery is ``dead`` with it (until redelivered)
        rather than starting that span again on its own, one delivery after another."""
        values: dict[str, Any] = {
            "status": "pending",
            "attempts": item.attempts - 1,
            "last_attempt_at": item.previous_attempt_at,
            "last_error": _short(
                f"not sent: another attempt to the receiver failed just before ({why.reason})"
            ),
            "last_status_code": None,
        }
        if why.failed["status"] == "dead":
            values["status"] = "dead"
            values["last_error"] = _short(
                "not sent: the receiver did not answer any attempt of another delivery "
                f"in its retry span ({why.reason})"
            )
            if self.on_dead is not None:
                self.on_dead()
        else:
            values["next_attempt_at"] = why.failed["next_attempt_at"]
        return values

    def _failure(
        self,
        item: repository.ClaimedDelivery,
        error: str,
        status_code: int | None,
        *,
        at_least: float | None = None,
    ) -> dict[str, Any]:
        """A failed attempt: retried after a backoff, or ``dead`` once attempts run out.

        ``at_least`` (a receiver's Retry-After) lengthens the backoff to that many seconds,
        but never beyond the cap: a receiver cannot park its deliveries for longer."""
        cap = self.settings.webhook_retry_cap_seconds
        if item.attempts >= self.settings.webhook_max_attempts:
            values: dict[str, Any] = {"status": "dead"}
            if self.on_dead is not None:
                self.on_dead()
        else:
            delay = backoff_seconds(item.attempts, base=self.settings.webhook_retry_base_seconds, cap=cap)
            if at_least is not None:
                delay = max(delay, min(at_least, cap))
            values = {"status": "pending", "next_attempt_at": utcnow() + timedelta(seconds=delay)}
        values.update(last_error=_short(error), last_status_code=status_code)
        return values

    async def _record(
        self, batch: Sequence[repository.ClaimedDelivery], outcomes: dict[str, dict[str, Any]]
    ) -> None:
        """Write the outcomes of ``batch`` (all of a batch, or those known together) in one
        transaction; a 410 Gone among them disables its subscription."""
        gone: dict[str, repository.SubscriptionRow] = {}
        disabled: list[AuditEntry] = []
        now = self.runtime.clock()
        # Rotated-out secrets whose overlap has ended are not kept past it.
        expired = {
            item.subscription.id
            for item in batch
            if item.subscription.previous_secret_ciphertext is not None
            and not _previous_signs(item.subscription, now)
        }
        async with self.runtime.engine.begin() as conn:
            await repository.forget_previous_secrets(conn, sorted(expired), now)
            for item in batch:
                values = outcomes.get(item.id) or self._failure(item, "no outcome", None)
                if not await repository.record_result(conn, item.id, item.claim_token, values):
                    logger.warning("delivery %s: claim lost before its result was recorded", item.id)
                if _gone(values):
                    gone[item.subscription.id] = item.subscription
            # After the results: disabling cancels the subscription's other pending
            # deliveries, including this batch's that are to be retried.
            for subscription_id, subscription in gone.items():
                if await repository.disable_subscription(conn, subscription_id):
                    origin = _origin(subscription.webhook_url)
                    logger.warning(
                        "subscription %s disabled: its receiver %s answered 410 Gone", subscription_id, origin
                    )
                    disabled.append(
                        subscription_change_entry(
                            client_id=SERVICE_ACTOR,
                            department=subscription.department,
                            subscription_id=subscription_id,
                            change="disabled",
                            why="its receiver answered 410 Gone",
                            fields=subscription.fields,
                            owners=await field_owners(conn, subscription.fields),
                            purpose=subscription.purpose or None,
                            status=GONE,
                            source=origin,
                        )
                    )
        # Audited once the disabling is committed (only the dispatcher that disabled it
        # tells). It is not undone when the audit cannot be written: it only stops
        # deliveries, and ``_audited`` logs the failure.
        if disabled:
            await self._audited(disabled)

    # --- the loop ---------------------------------------------------------------------

    async def run_once(self) -> int:
        """One cycle: access notices from the audit log (one transaction), then fan out and
        claim a batch (another), then attempt it, to its last result. Returns notices made,
        deliveries created and attempts made."""
        made, batch = await self._cycle(self.batch_size)
        if batch:
            await self.deliver(batch)
        return made + len(batch)

    async def _cycle(self, limit: int) -> tuple[int, list[repository.ClaimedDelivery]]:
        """Access notices and fan-out (``run_once``), and up to ``limit`` deliveries claimed;
        returns the notices and deliveries made, and the claimed."""
        noticed = await self.notices.run_once(self.runtime.clock())
        if noticed:
            # Feeds waiting in this process see the new notices at once.
            self.runtime.notifier.notify()
        async with self.runtime.engine.begin() as conn:
            created = await fanout.fan_out(conn)
            batch = await self._claim(conn, limit)
        return noticed + created, batch

    def _room(self) -> int:
        """How many deliveries the loop claims now: a batch when it holds none; while it
        holds some, the slots they leave free, once that is at least half of them (claims
        in bunches, not one a cycle as each attempt ends). So an attempt of a batch claimed
        while others are under way never waits for a slot, and is made within its lease."""
        if self._in_hand == 0:
            return self.batch_size
        free = self._concurrency - self._in_hand
        return min(free, self.batch_size) if free * 2 >= self._concurrency else 0

    def _given(self, count: int) -> None:
        self._in_hand -= count
        self._freed.set()

    def _start(self, batch: list[repository.ClaimedDelivery], batches: set[asyncio.Task[None]]) -> None:
        """Attempt ``batch`` in a task of its own, its deliveries held until each has a result."""
        self._in_hand += len(batch)
        task = asyncio.create_task(self.deliver(batch, on_given=self._given), name="webhook-batch")
        batches.add(task)
        task.add_done_callback(batches.discard)
        task.add_done_callback(self._batch_ended)

    def _batch_ended(self, task: asyncio.Task[None]) -> None:
        """Tell the loop a batch has ended, and log the exception that ended it, if any (a
        bug: ``deliver`` keeps a batch's failures to it), rather than leave it unread."""
        self._ended.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failures.failed("webhook batch failed", exc)

    async def _idle_timeout(self) -> float:
        poll = self.settings.events_poll_interval_seconds
        async with self.runtime.engine.connect() as conn:
            due: datetime | None = await repository.next_due_at(conn)
        if due is None:
            return poll
        return max(0.0, min(poll, (due - utcnow()).total_seconds()))

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let the batches under way end. Each cycle's
        batch is attempted while the loop goes on (``_room`` says how many it claims); it
        sleeps on the notifier while there is nothing to do, and until an attempt ends while
        there is no room."""
        failures = FailureLog(logger, "event dispatcher")
        batches: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                self._freed.clear()
                self._ended.clear()
                room = self._room()
                if room == 0:
                    await _wait_first(self._freed.wait(), stop.wait())
                    continue
                generation = self.runtime.notifier.generation
                try:
                    made, batch = await self._cycle(room)
                    if batch:
                        self._start(batch, batches)
                    timeout = 0.0 if made or batch else await self._idle_timeout()
                    failures.succeeded()
                except Exception as exc:
                    failures.failed("event dispatcher cycle failed", exc)
                    timeout = self.settings.events_poll_interval_seconds
                if timeout <= 0 or self.runtime.notifier.generation != generation:
                    continue
                # A batch that ends may leave retries due sooner than the timeout says.
                await _wait_first(self.runtime.notifier.wait(timeout), stop.wait(), self._ended.wait())
            # A batch's exception is logged as it ends (``_batch_ended``).
            await asyncio.gather(*batches, return_exceptions=True)
        finally:
            # Only if this was cancelled: see ``deliver``.
            for task in list(batches):
                task.cancel()
            await asyncio.gather(*batches, return_exceptions=True)


async def _wait_first(*waits: Any) -> None:
    """Until the first of ``waits`` (awaitables) is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@dataclass(frozen=True)
class _Unreachable:
    """Why a receiver got no answer, and the outcome of the attempt that found it."""

    reason: str
    failed: dict[str, Any]


@dataclass(frozen=True)
class _Unanswering:
    """A receiver's attempt that got no answer (``why``), what holds its deliveries back
    ``until``, and the delivery it was (whose retry is sent)."""

    why: _Unreachable
    until: datetime
    delivery_id: str


_Settle = Callable[[repository.ClaimedDelivery, dict[str, Any]], None]


class _Results:
    """A batch's outcomes, written as they come: ``settle`` gives one (the first given for a
    delivery stands), and ``write`` records what has come since its last write in one
    transaction, again and again, until every delivery of the batch has its outcome. An
    attempt that ends while a write is under way is in the next one, so a slow receiver's
    delivery never holds another's result, and results that come together share a commit."""

    def __init__(
        self,
        record: Callable[[Sequence[repository.ClaimedDelivery], dict[str, dict[str, Any]]], Any],
        count: int,
        failures: FailureLog,
        on_given: Callable[[int], None] | None = None,
    ) -> None:
        self._record = record
        self._count = count
        self._left = count
        self._failures = failures
        self._on_given = on_given
        self._given: set[str] = set()
        self._queue: asyncio.Queue[tuple[repository.ClaimedDelivery, dict[str, Any]]] = asyncio.Queue()
        self.unsent = 0

    @property
    def ungiven(self) -> int:
        """Deliveries of the batch without an outcome yet."""
        return self._count - len(self._given)

    def settled(self, item: repository.ClaimedDelivery) -> bool:
        return item.id in self._given

    def settle(self, item: repository.ClaimedDelivery, values: dict[str, Any]) -> None:
        if item.id in self._given:
            return
        self._given.add(item.id)
        if _given_back(values):
            self.unsent += 1
        self._queue.put_nowait((item, values))
        if self._on_given is not None:
            self._on_given(1)

    async def write(self) -> None:
        while self._left > 0:
            come = [await self._queue.get()]
            while not self._queue.empty():
                come.append(self._queue.get_nowait())
            self._left -= len(come)
            try:
                await self._record(
                    [item for item, _values in come], {item.id: values for item, values in come}
                )
            except Exception as exc:
                # Claims not recorded run out with their lease and are attempted again (at
                # least once); the batch's other results are still written.
                self._failures.failed("recording %d webhook results failed", exc, len(come))
            else:
                self._failures.succeeded()


class _FairTurns:
    """At most ``slots`` attempts at once (of all the dispatcher's batches). When one ends,
    its slot goes to a waiting attempt of the receiver with the fewest attempts under way
    (the first to wait among equals), so while other receivers have deliveries waiting, a
    receiver that answers slowly takes no more slots than they do; alone, it may use them all."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._busy: Counter[str] = Counter()
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    @contextlib.asynccontextmanager
    async def turn(self, receiver: str) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._busy[receiver] += 1
        else:
            given: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((receiver, given))
            try:
                await given
            except asyncio.CancelledError:
                if given.done() and not given.cancelled():
                    self._end(receiver)  # the slot came with the cancellation: pass it on
                else:
                    self._waiting.remove((receiver, given))
                raise
        try:
            yield
        finally:
            self._end(receiver)

    def _end(self, receiver: str) -> None:
        self._busy[receiver] -= 1
        if not self._waiting:
            self._free += 1
            return
        index = min(range(len(self._waiting)), key=lambda i: self._busy[self._waiting[i][0]])
        waiting, given = self._waiting.pop(index)
        # Counted now, not when the waiter wakes, so the next slot to free is shared fairly too.
        self._busy[waiting] += 1
        given.set_result(None)


def _taking_turns(entries: Sequence[_T], *, key: Callable[[_T], str]) -> list[_T]:
    """``entries`` reordered round-robin by ``key``: each key's first, in the order the keys
    first appear, then each key's second, and so on; each key's own order is kept."""
    queues: dict[str, list[_T]] = {}
    for entry in entries:
        queues.setdefault(key(entry), []).append(entry)
    turns = list(queues.values())
    return [
        queue[i] for i in range(max((len(q) for q in turns), default=0)) for queue in turns if i < len(queue)
    ]


def _previous_signs(subscription: repository.SubscriptionRow, now: datetime) -> bool:
    """Whether the secret a rotation replaced still signs the subscription's deliveries."""
    until = subscription.previous_secret_expires_at
    return subscription.previous_secret_ciphertext is not None and until is not None and now < until


def _gone(values: dict[str, Any]) -> bool:
    """Whether an attempt's outcome is the receiver's 410 Gone (only ``_post`` makes one)."""
    return bool(values.get("status") == "cancelled" and values.get("last_status_code") == GONE)


def _given_back(values: dict[str, Any]) -> bool:
    """Whether an outcome gives back the attempt its claim counted (only ``_unsent`` does)."""
    return "attempts" in values


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _short(text: str) -> str:
    return text if len(text) <= _ERROR_LENGTH else text[: _ERROR_LENGTH - 1] + "…"


async def run_dispatcher(settings: Settings, stop_event: asyncio.Event) -> None:
    """The dispatcher outside ``serve``, with its own engine and audit writer, until ``stop_event``."""
    engine = engine_for(settings)
    audit = OwnAuditSink(engine)
    await audit.start()
    runtime = EventsRuntime(settings=settings, engine=engine, policy=LivePolicy(), audit=audit)
    dispatcher = Dispatcher(runtime)
    try:
        async with postgres_wakeups(
            settings.database_url, runtime.notifier, settings.db_pool_recycle_seconds
        ):
            await dispatcher.run(stop_event)
    finally:
        await dispatcher.aclose()
        await audit.stop()
        await engine.dispose()
