"""Team mode on a machine shared with other users: a private team folder, and no admin password
sent to a server that another user runs on the team's port.

On 127.0.0.1 without TLS nothing proves who answers on a port: another user of the machine can
start a server on the MLflow port before ``team up`` does (or while it is down), and the admin's
HTTP Basic header would reach it in the clear. The kernel knows who owns a listening socket
(``/proc/net/tcp``, Linux): the admin password goes only to a port this user listens on. Over TLS
the team's certificate proves the server instead.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from pipeline.errors import PipelineError

#: The kernel's tables of TCP sockets (IPv4, IPv6): address, state and owner of each.
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"


def private_folder(folder: Path) -> None:
    """Make ``folder`` (and parents) and give it mode 0700, tightening an existing one; under
    root 0711, as PostgreSQL runs as ``nobody`` and must traverse it (every file in it is 0600 or
    in a 0700 folder of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    mode = 0o711 if os.geteuid() == 0 else 0o700
    if folder.stat().st_uid == os.geteuid():
        os.chmod(folder, mode)


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    return address.ipv4_mapped or address if isinstance(address, ipaddress.IPv6Address) else address


def listener_uids(host: str, port: int) -> set[int]:
    """The users owning a socket that listens on ``host:port`` (its address or every address);
    empty when none does or the tables cannot be read."""
    try:
        wanted = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return set()
    owners = set()
    for table in TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            address, _, port_hex = fields[1].partition(":")
            try:
                local = _address(address)
            except ValueError:
                continue
            if int(port_hex, 16) == port and (local == wanted or local.is_unspecified):
                owners.add(int(fields[7]))
    return owners


def refuse_foreign_listener(host: str, port: int, secure: bool, what: str) -> None:
    """Before ``what`` is sent over plain HTTP: refuse in one line when another user owns the
    socket listening on ``host:port`` (over TLS the certificate speaks for the server)."""
    if secure:
        return
    foreign = sorted(listener_uids(host, port) - {os.geteuid()})
    if foreign:
        raise PipelineError(
            f"a server of another user (uid {', '.join(map(str, foreign))}) listens on {host}:{port}: "
            f"{what} is not sent to it (stop it, or choose another port)"
        )
