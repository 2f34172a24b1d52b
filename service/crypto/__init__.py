"""Field-level encryption: root key -> department KEKs -> per-citizen data keys -> values.

``aead`` and ``blind_index`` are pure; ``keyring`` holds the keys a process uses and
``service`` runs rotation, re-encryption and status for the ``tellonce keys`` commands.
"""
