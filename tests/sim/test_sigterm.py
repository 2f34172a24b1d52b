"""``tellonce demo`` stops its server and witnesses on SIGTERM and on Ctrl-C, even when
started with SIGINT ignored (the background of a non-interactive shell)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_demo_stops_its_children(stop: signal.Signals) -> None:
    # A process shaped like the demo: a child it must stop in ``finally``.
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from service.sim.cli import stop_on_signals
        stop_on_signals()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            print(child.pid, flush=True)  # ready: inside the try, as the demo's serving is
            time.sleep(600)
        except KeyboardInterrupt:
            pass
        finally:
            child.terminate()
            child.wait(timeout=10)
        """
    )
    # Started as a background job of a script would be: SIGINT ignored.
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    ) as demo:
        assert demo.stdout is not None
        child_pid = int(demo.stdout.readline())
        demo.send_signal(stop)
        assert demo.wait(timeout=30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
