"""The web console: server-rendered pages for data owners, auditors and a citizen portal."""
