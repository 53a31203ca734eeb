#!/usr/bin/python3
"""mariadb-kms-restore: restore a mariadb-kms-backup on this host (``--help`` says how).

The code is mariadb-kms-backup's (``restore_main``), installed beside this
file: one copy of the manifest rules serves both directions.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# Installed: /usr/local/sbin/mariadb-kms-backup beside this file; in the repository: node/mariadb_kms_backup.py.
_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE / "mariadb-kms-backup", _HERE / "mariadb_kms_backup.py")


def load_backup_module() -> ModuleType:
    path = next((p for p in _CANDIDATES if p.is_file()), None)
    if path is None:
        raise SystemExit(f"mariadb-kms-restore: {_CANDIDATES[0]} is missing (it carries the restore code)")
    name = "mariadb_kms_backup"
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    if spec is None:
        raise SystemExit(f"mariadb-kms-restore: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(int(load_backup_module().restore_main()))
