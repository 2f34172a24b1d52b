"""Tell-us-once events: the outbox, subscriptions, the pull feed and signed webhooks."""
