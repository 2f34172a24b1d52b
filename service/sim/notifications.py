"""How the department systems hear of changes, and what each does when it does.

Webhook departments get signed POSTs on loopback receivers; feed departments long-poll
``/v1/events``. Every notification is counted once; one that reaches a department the
citizen did not tell directly is a re-telling avoided, and the department reads the new
value for its purpose (a death: each closes or cancels what it holds). The citizen portal
gets an access notice for every access that released a citizen's data (an
investigation's only once its case is closed), and counts them.
"""

from __future__ import annotations

from service.sim.scenarios import Government
from service.sim.webhooks import Delivery

# Who hears of what, for which purpose, and how. Webhook departments get signed POSTs;
# feed departments poll. Each department subscribes once per purpose.
SUBSCRIPTIONS = ((("address", "postcode"), "address-update"), (("date_of_death",), "bereavement"))
WEBHOOK_SUBSCRIBERS = ("dvla", "dwp", "hmrc")
FEED_SUBSCRIBERS = ("council", "hmpo")
# The consumer of the demo's consent-based agreement, told of its consents by the feed.
CONSENT_SUBSCRIBER = "council"
# The citizen portal is told of every access to a citizen's record, by webhook.
PORTAL = "citizen-portal"
# Each department's own field that it changes when it hears of a death.
ON_DEATH = {
    "dwp": ("benefit_status", "stopped", "benefit stopped"),
    "dvla": ("licence_status", "cancelled", "licence cancelled"),
    "hmpo": ("passport_status", "cancelled", "passport cancelled"),
}


async def subscribe_all(gov: Government) -> bool:
    """Replace earlier runs' subscriptions with this run's, and skip old feed events.

    False if the server has no events service (``/v1/subscriptions`` is not routed)."""
    for department in (*WEBHOOK_SUBSCRIBERS, *FEED_SUBSCRIBERS):
        system = gov.systems[department]
        existing = await system.subscriptions()
        if existing is None:
            return False
        for item in existing:
            await system.unsubscribe(item.id)
        url = gov.receivers.url_for(department) if department in WEBHOOK_SUBSCRIBERS else None
        for fields, purpose in SUBSCRIPTIONS:
            created = await system.subscribe(fields, purpose, url=url)
            if url is not None and created.secret is not None:
                gov.receivers.trust(department, created.secret)
        if department == CONSENT_SUBSCRIBER:
            await system.subscribe_consent_changes()
        if url is None:
            cursor: str | None = None
            while True:
                items, cursor = await system.events(cursor, wait=0)
                if not items:
                    break
            gov.feeds[department] = cursor
    portal = gov.systems[PORTAL]
    for item in await portal.subscriptions() or []:
        await portal.unsubscribe(item.id)
    created = await portal.subscribe_access_notices(gov.receivers.url_for(PORTAL))
    if created.secret is not None:
        gov.receivers.trust(PORTAL, created.secret)
    return True


async def poll_feed(gov: Government, department: str) -> None:
    """The feed departments' systems: long-poll ``/v1/events`` and queue what arrives."""
    system = gov.systems[department]
    while True:
        items, cursor = await system.events(gov.feeds.get(department), wait=1)
        gov.feeds[department] = cursor
        for data in items:
            await gov.receivers.deliveries.put(Delivery(department, "feed", data))


# --- acting on events -------------------------------------------------------------------


async def handle_deliveries(gov: Government) -> None:
    while True:
        delivery = await gov.receivers.deliveries.get()
        try:
            await act_on(gov, delivery)
        finally:
            gov.receivers.deliveries.task_done()


async def act_on(gov: Government, delivery: Delivery) -> None:
    data = delivery.data
    if data.get("type") == "consent.changed":
        # The council keeps the consent's status beside its application; nothing to read.
        gov.tally.actions[f"{delivery.department} told a consent was {data.get('status')}"] += 1
        return
    if data.get("type") == "access.recorded":
        # The portal would show it to the citizen; the demo counts it.
        gov.tally.access_notices += 1
        if data.get("disclosed_by") == "case-closed":
            gov.tally.disclosed_on_close += 1
        return
    citizen_id = str(data.get("citizen_id", ""))
    event_id = str(data.get("event_id", ""))
    fields = [str(f) for f in data.get("fields", [])]
    department = delivery.department
    if not gov.tally.record_notification(department, event_id, delivery.channel):
        return
    if department in gov.told.get(citizen_id, set()):
        return  # the citizen told this department directly; it already knows
    gov.tally.retellings_avoided += 1
    system = gov.systems[department]
    if "date_of_death" in fields:
        values = await system.read_values(citizen_id, ["date_of_death"], "bereavement")
        if not values or not values.get("date_of_death"):
            return
        action = ON_DEATH.get(department)
        citizen = gov.by_id.get(citizen_id)
        if action is None:
            gov.tally.actions[f"{department} closed its record"] += 1
            return
        if citizen is None or department not in citizen.person.owned:
            return  # no licence or passport to cancel

        name, value, label = action
        response = await system.write(citizen_id, {name: value}, "death told once, by the register")
        if response.ok:
            gov.tally.actions[label] += 1
    elif "address" in fields or "postcode" in fields:
        values = await system.read_values(citizen_id, ["address", "postcode"], "address-update")
        if values is not None:
            gov.tally.actions[f"{department} updated an address"] += 1
