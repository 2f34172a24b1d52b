"""``tellonce demo`` treats SIGTERM as Ctrl-C, so its server and witnesses are stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest


def test_a_terminated_demo_stops_its_children() -> None:
    # A process shaped like the demo: a child it must stop in ``finally``, then SIGTERM.
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from service.sim.cli import stop_on_sigterm
        stop_on_sigterm()
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
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as demo:
        assert demo.stdout is not None
        child_pid = int(demo.stdout.readline())
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
