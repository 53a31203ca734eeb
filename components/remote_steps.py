"""Kept for code that imports the put transport from here (the rehearsal's overlay); see ``components/plan``."""

from components.plan.steps import FileSpec, files_digest, put_command, put_payload

__all__ = ["FileSpec", "files_digest", "put_command", "put_payload"]
