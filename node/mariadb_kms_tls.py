#!/usr/bin/python3
"""mariadb-kms-tls: a node's TLS material as MariaDB, Galera and the SST see it; reload it without a restart.

Installed as /usr/local/sbin/mariadb-kms-tls; run as root on the node.

    mariadb-kms-tls inspect   one JSON document of facts (mariadb-kms-verify judges them):
                              - the SST's TLS settings, resolved the way wsrep_sst_mariabackup
                                (MariaDB 10.11) resolves them from the option files;
                              - every certificate and key file the server, Galera and the SST name:
                                chain to its CA, expiry, key match, the key's mode and owner;
                              - whether socat (the SST's transport) has OpenSSL;
                              - what the running node serves: on its Galera port, a handshake
                                verified against the CA (SHA-256 fingerprint of the certificate
                                it presents); for clients, the certificate the server reports
                                loaded (Ssl_server_not_before/after; a handshake on the SQL port
                                needs an account matching the probing host, which a fresh node
                                does not have).
    mariadb-kms-tls reload    after the program installed new certificate files (a renewal): check
                              them, make the running server (FLUSH SSL) and Galera (socket.ssl_reload)
                              take them, and confirm both serve the new certificate. The node
                              stays in the cluster; the SST reads the files at each transfer anyway.
                              Exit 1, reloading nothing, when the files are unusable; exit 1 too when
                              a port still serves another certificate afterwards.

It prints no secret: never a key, only fingerprints and paths.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PROG = "mariadb-kms-tls"
SST_GROUPS = ("--mysqld", "sst", "xtrabackup", "mariabackup")  # wsrep_sst_mariabackup's "encgroups", in order
SST_LEGACY = {"tca": "ca", "tcapath": "capath", "tcert": "cert", "tkey": "key"}
SST_ROLE_OVERRIDES = tuple(
    f"ssl-{role}-{what}" for role in ("server", "client") for what in ("ca", "capath", "cert", "key")
)
VERIFY_MODES = ("VERIFY_CA", "VERIFY_IDENTITY")
GALERA_PORT = 4567
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.S)

Run = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        # errors="replace": after a handshake Galera's port sends binary protocol bytes, which s_client prints.
        return subprocess.run(list(argv), input=stdin if stdin is not None else "", capture_output=True, text=True,
                              errors="replace", timeout=30, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not installed")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: timed out")


def say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


# --------------------------------------------------------------------------
# Option files (my_print_defaults)
# --------------------------------------------------------------------------


def parse_defaults(text: str) -> dict[str, str]:
    """``my_print_defaults`` output as {option: value}; names with '-' (as the SST scripts normalise them),
    a ``loose-`` prefix dropped, the last occurrence winning."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        name = name.removeprefix("loose-").replace("_", "-")
        out[name] = value.strip().strip('"').strip("'")
    return out


def read_groups(groups: Iterable[str], run_: Run = run) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for group in groups:
        proc = run_(["my_print_defaults", group], None)
        found[group] = parse_defaults(proc.stdout) if proc.returncode == 0 else {}
    return found


def resolve_sst(groups: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The SST's TLS settings as wsrep_sst_common/wsrep_sst_mariabackup (10.11) derive them.

    ``groups``: option group -> options, for SST_GROUPS. The first group holding a value wins.
    """

    def enc(name: str, default: str = "") -> str:
        for group in SST_GROUPS:
            value = groups.get(group, {}).get(name, "")
            if value:
                return value
        return default

    sst = groups.get("sst", {})
    legacy = {role: sst.get(option, "") for option, role in SST_LEGACY.items()}
    if any(legacy.values()):
        ca, capath, cert, key = legacy["ca"], legacy["capath"], legacy["cert"], legacy["key"]
    else:
        ca, capath, cert, key = enc("ssl-ca"), enc("ssl-capath"), enc("ssl-cert"), enc("ssl-key")
    try:
        encrypt = int(enc("encrypt", "0"))
    except ValueError:
        encrypt = -1
    mode = enc("ssl-mode", "DISABLED").upper()
    error = ""
    effective = encrypt
    if encrypt == 0 and mode != "DISABLED":
        if cert and key:
            effective = 3
            if mode not in VERIFY_MODES:  # e.g. REQUIRED: encrypted, but the peer is not verified
                ca = capath = ""
        else:
            error = f"ssl-mode={mode} without a certificate and key: the SST script refuses to run"
    tls = effective in (2, 3, 4)
    if effective == 1:
        error = "encrypt=1 is symmetric stream encryption with a shared key, not TLS"
    elif encrypt not in (0, 1, 2, 3, 4):
        error = f"encrypt={enc('encrypt')} is not a mode the SST script knows"
    return {
        "method": groups.get("--mysqld", {}).get("wsrep-sst-method", "rsync"),
        "ssl_mode": mode,
        "encrypt": encrypt,
        "tls": tls,
        "verifies_peer": tls and bool(ca or capath),
        "error": error,
        "ca": ca,
        "capath": capath,
        "cert": cert,
        "key": key,
        "legacy_options": any(legacy.values()),
        "role_overrides": sorted(k for k in SST_ROLE_OVERRIDES if enc(k)),
    }


def provider_options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.strip().strip('"').split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def is_on(value: str) -> bool:
    return value.strip().upper() in ("YES", "ON", "TRUE", "1")


# --------------------------------------------------------------------------
# Certificate and key files
# --------------------------------------------------------------------------


def pem_fingerprint(data: bytes) -> str | None:
    """SHA-256 of the first certificate in ``data`` (PEM), as colon-free hex."""
    match = _PEM_CERT.search(data)
    if not match:
        return None
    return hashlib.sha256(base64.b64decode(b"".join(match.group(1).split()))).hexdigest()


def cert_facts(cert: str, ca: str, run_: Run = run, now: dt.datetime | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {"path": cert, "ca": ca, "exists": os.path.isfile(cert)}
    if not facts["exists"]:
        return facts
    facts["sha256"] = pem_fingerprint(Path(cert).read_bytes())
    info = run_(["openssl", "x509", "-in", cert, "-noout", "-subject", "-issuer", "-startdate", "-enddate",
                 "-nameopt", "RFC2253"], None)
    for line in info.stdout.splitlines():
        key, _, value = line.partition("=")
        facts[{"notAfter": "not_after", "notBefore": "not_before"}.get(key.strip(), key.strip())] = value.strip()
    if "not_after" in facts:
        end = dt.datetime.strptime(facts["not_after"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
        facts["days_left"] = round(((end - (now or dt.datetime.now(dt.UTC))).total_seconds()) / 86400, 1)
    if ca:
        check = run_(["openssl", "verify", "-CAfile", ca, cert], None)
        facts["chain_ok"] = check.returncode == 0
        if check.returncode != 0:
            lines = (check.stderr + check.stdout).strip().splitlines()
            facts["chain_error"] = " ".join(lines[-2:]) or "openssl verify failed"
    return facts


def key_facts(key: str, cert: str, run_: Run = run) -> dict[str, Any]:
    facts: dict[str, Any] = {"path": key, "exists": os.path.isfile(key)}
    if not facts["exists"]:
        return facts
    st = os.stat(key)
    facts["mode"] = f"{st.st_mode & 0o7777:04o}"
    try:
        facts["owner"] = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        facts["owner"] = str(st.st_uid)
    if cert and os.path.isfile(cert):
        # Public halves only: nothing secret leaves openssl.
        from_cert = run_(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], None)
        from_key = run_(["openssl", "pkey", "-in", key, "-pubout"], None)
        facts["matches_cert"] = from_cert.returncode == 0 and from_cert.stdout.strip() == from_key.stdout.strip()
    return facts


def material_usable(facts: Mapping[str, Any], key: Mapping[str, Any]) -> list[str]:
    """Why a certificate/key pair must not be loaded (empty: it may)."""
    problems = []
    if not facts.get("exists"):
        problems.append(f"{facts['path']} is missing")
    elif facts.get("chain_ok") is False:
        problems.append(f"{facts['path']} does not chain to {facts['ca']}: {facts.get('chain_error', '')}")
    elif facts.get("days_left", 1) <= 0:
        problems.append(f"{facts['path']} expired ({facts.get('not_after')})")
    if not key.get("exists"):
        problems.append(f"{key['path']} is missing")
    elif key.get("matches_cert") is False:
        problems.append(f"{key['path']} is not the key of {facts['path']}")
    return problems


# --------------------------------------------------------------------------
# What the node serves
# --------------------------------------------------------------------------


def served_galera(channel: Mapping[str, str], run_: Run = run) -> dict[str, Any]:
    """A TLS handshake with Galera's port, presenting the node's own certificate (Galera wants a client
    certificate) and verifying the peer against the CA; the certificate it got."""
    address, port = channel["address"], channel["port"]
    host = f"[{address}]" if ":" in address else address
    argv = ["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", channel["ca"], "-verify_return_error",
            "-cert", channel["cert"], "-key", channel["key"]]
    proc = run_(argv, "")
    fingerprint = pem_fingerprint(proc.stdout.encode())
    result: dict[str, Any] = {"address": f"{host}:{port}", "ok": proc.returncode == 0 and fingerprint is not None,
                              "sha256": fingerprint}
    protocol = re.search(r"^\s*Protocol\s*:\s*(\S+)", proc.stdout, re.M)
    if protocol:
        result["protocol"] = protocol.group(1)
    if not result["ok"]:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln.lower() or "errno" in ln]
        result["error"] = (lines or [f"openssl s_client exited {proc.returncode}"])[-1].strip()[:300]
    return result


def served_clients(status: Mapping[str, str], cert: Mapping[str, Any]) -> dict[str, Any]:
    """The certificate the server has loaded for clients, by its validity dates, against the file."""
    loaded = {"not_before": status.get("ssl_server_not_before", ""),
              "not_after": status.get("ssl_server_not_after", "")}
    result: dict[str, Any] = {"source": "server status Ssl_server_not_before/after", **loaded,
                              "ok": bool(loaded["not_after"])}
    if not result["ok"]:
        result["error"] = "the server reports no loaded certificate"
    result["matches_file"] = bool(loaded["not_after"]) and (loaded["not_before"], loaded["not_after"]) == (
        cert.get("not_before"), cert.get("not_after"))
    return result


def served_matches(name: str, got: Mapping[str, Any], cert: Mapping[str, Any]) -> bool:
    if not got.get("ok"):
        return False
    if name == "clients":
        return bool(got.get("matches_file"))
    return got.get("sha256") == cert.get("sha256")


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class SqlError(RuntimeError):
    pass


def sql(statements: str) -> str:
    proc = run(["mariadb", "--batch", "--skip-column-names", "--protocol=socket", "--user=root"], statements)
    if proc.returncode != 0:
        raise SqlError(proc.stderr.strip() or f"mariadb exited {proc.returncode}")
    return proc.stdout


def server_pairs(query: str) -> dict[str, str] | None:
    """Name/value rows of a SHOW query to the running server; None when it does not answer."""
    try:
        text = sql(query)
    except SqlError:
        return None
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition("\t")
        out[name.lower()] = value
    return out


def server_variables() -> dict[str, str] | None:
    return server_pairs("SHOW GLOBAL VARIABLES")


def ssl_status() -> dict[str, str]:
    return server_pairs("SHOW GLOBAL STATUS LIKE 'Ssl_server_not%'") or {}


def channels(variables: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Where the server (clients) and Galera (replication) take their TLS material, and where they listen."""
    found: dict[str, dict[str, str]] = {}
    if variables.get("ssl_cert"):
        address = variables.get("bind_address", "") or "127.0.0.1"
        if address in ("*", "0.0.0.0", "::"):  # noqa: S104 - reading the server's setting, not binding
            address = "127.0.0.1"
        found["clients"] = {"cert": variables["ssl_cert"], "key": variables.get("ssl_key", ""),
                            "ca": variables.get("ssl_ca", ""), "address": address,
                            "port": variables.get("port", "3306")}
    opts = provider_options(variables.get("wsrep_provider_options", ""))
    if is_on(opts.get("socket.ssl", "NO")):
        listen = opts.get("gmcast.listen_addr", "")
        match = re.match(r"^(?:tcp|ssl)://\[?([^\]]*?)\]?:(\d+)$", listen)
        address, port = (match.group(1), match.group(2)) if match else (variables.get("wsrep_node_address", ""),
                                                                         str(GALERA_PORT))
        if address in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the provider's setting
            address = (variables.get("wsrep_node_address", "") or "127.0.0.1").split(":")[0]
        found["replication"] = {"cert": opts.get("socket.ssl_cert", ""), "key": opts.get("socket.ssl_key", ""),
                                "ca": opts.get("socket.ssl_ca", ""), "address": address, "port": port}
    return found


def config_variables(groups: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The server's TLS variables from the option files, for a node whose server is down."""
    mysqld = groups.get("--mysqld", {})
    return {name.replace("-", "_"): value for name, value in mysqld.items()}


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def socat_has_openssl() -> bool | None:
    proc = run(["socat", "-V"], None)
    if proc.returncode == 127:
        return None
    return "WITH_OPENSSL 1" in proc.stdout


def inspect() -> dict[str, Any]:
    groups = read_groups(SST_GROUPS)
    live = server_variables()
    variables = live if live is not None else config_variables(groups)
    where = channels(variables)
    sst = resolve_sst(groups)
    pairs: dict[str, tuple[str, str]] = {}  # cert -> (key, ca)
    for channel in where.values():
        if channel["cert"]:
            pairs[channel["cert"]] = (channel["key"], channel["ca"])
    if sst["cert"]:
        pairs.setdefault(sst["cert"], (sst["key"], sst["ca"]))
    files: dict[str, Any] = {}
    for cert, (key, ca) in pairs.items():
        files[cert] = cert_facts(cert, ca)
        if key:
            files[key] = key_facts(key, cert)
    facts: dict[str, Any] = {
        "server_running": live is not None,
        "channels": where,
        "sst": sst,
        "files": files,
        "tools": {"socat_openssl": socat_has_openssl(), "openssl": run(["openssl", "version"], None).returncode == 0},
        "served": {},
    }
    if live is not None:
        if "clients" in where:
            facts["served"]["clients"] = served_clients(ssl_status(), files.get(where["clients"]["cert"], {}))
        if "replication" in where:
            facts["served"]["replication"] = served_galera(where["replication"])
    return facts


def reload() -> int:
    live = server_variables()
    if live is None:
        say("MariaDB is not running here: it reads the certificate files when it starts; nothing to reload")
        return 0
    where = channels(live)
    if not where:
        say("neither the server nor Galera uses TLS here: nothing to reload")
        return 0
    problems: list[str] = []
    for channel in where.values():
        problems += material_usable(cert_facts(channel["cert"], channel["ca"]),
                                    key_facts(channel["key"], channel["cert"]))
    if problems:
        for problem in dict.fromkeys(problems):
            print(f"{PROG}: ERROR: {problem}", file=sys.stderr)
        print(f"{PROG}: ERROR: nothing reloaded; the node keeps serving its current certificate", file=sys.stderr)
        return 1
    if "clients" in where:
        sql("FLUSH SSL;")
        say("server: FLUSH SSL done (new client connections get the installed certificate)")
    if "replication" in where:
        sql("SET GLOBAL wsrep_provider_options = 'socket.ssl_reload=1';")
        say("galera: socket.ssl_reload done (new peer connections get the installed certificate)")
    failed = 0
    for name, channel in where.items():
        cert = cert_facts(channel["cert"], channel["ca"])
        got = served_clients(ssl_status(), cert) if name == "clients" else served_galera(channel)
        if served_matches(name, got, cert):
            say(f"{name}: serves the installed certificate (sha256 {str(cert.get('sha256'))[:16]}..., "
                f"valid until {cert.get('not_after')})")
        else:
            failed += 1
            why = got.get("error") or "it serves another certificate than the installed one"
            print(f"{PROG}: ERROR: {name}: {why}", file=sys.stderr)
    return 1 if failed else 0


HELP_EPILOG = """\
exit status: 0 inspect printed its report, or reload made both ports serve the new certificate;
             1 reload refused unusable files (nothing reloaded) or a port still serves another one;
             2 not root, the server could not be asked, bad argument

example: sudo mariadb-kms-tls inspect | python3 -m json.tool
         sudo mariadb-kms-tls reload
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0] + " Run it as root on a mariadb-kms node (Debian 12).",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("inspect", help="print the TLS facts of this node as JSON")
    sub.add_parser("reload", help="make the running node take the installed certificate files")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: must run as root", file=sys.stderr)
        return 2
    if args.command == "inspect":
        print(json.dumps(inspect(), indent=2, sort_keys=True))
        return 0
    try:
        return reload()
    except SqlError as e:
        print(f"{PROG}: ERROR: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
