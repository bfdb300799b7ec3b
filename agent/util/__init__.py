"""Small tools with no knowledge of Codex: atomic writes, typed records from hostile bytes,
bounded file reads, redaction, and the service protocol of background work.

May import: the standard library and third-party packages only.
"""
