"""A standalone witness (C2SP tlog-witness, tlog-cosignature/v1 with Ed25519).

It cosigns a log's checkpoints only when each one is consistent with the last it
cosigned, so a log operator cannot show two different histories to two parties without
one witness refusing. It keeps its own small SQLite state and never touches the
tellonce database: a department, the audit office or a regulator runs it apart from
the service it watches.
"""
