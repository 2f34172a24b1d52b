"""``python -m service.witness``: the witness commands without loading the whole service.

The same commands as ``tellonce witness``; starting here imports only what a witness
needs, so a witness on a busy host is up in a fraction of the time.
"""

from service.witness.cli import app

if __name__ == "__main__":
    app(prog_name="tellonce witness")
