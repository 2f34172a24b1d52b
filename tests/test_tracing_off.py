"""Tracing is off unless an OTLP endpoint is configured, and then costs next to nothing."""

from __future__ import annotations

import pytest

from service import tracing
from service.app import create_app
from service.config import Settings


class TestOffByDefault:
    async def test_no_endpoint_means_no_instrumentation(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        assert not tracing.endpoint_configured()
        assert not tracing.install_tracing(create_app(settings))
        assert not tracing.enabled()

    def test_spans_links_and_log_fields_are_empty_when_off(self) -> None:
        assert not tracing.enabled()
        # One shared do-nothing context manager: no allocation per span on the hot path.
        assert tracing.span("auth") is tracing.span("policy.decide")
        assert tracing.current_link() is None
        assert tracing.log_fields() == {}

    def test_an_endpoint_turns_it_on(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        assert tracing.endpoint_configured()
