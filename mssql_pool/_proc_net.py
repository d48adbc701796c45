"""Where this process's TCP sockets really go, read from Linux's ``/proc/self/net/tcp``.

``mssql-pool check`` compares the sockets before and after a login: a socket to another
address than the one dialled shows that pymssql followed a routing token (a redirect),
whatever the server says about it.
"""

from __future__ import annotations

import os
import socket

__all__ = ["established_peers", "hex_ip"]


def established_peers() -> dict[str, tuple[str, int, int]]:
    """This process's ESTABLISHED TCP sockets: inode -> (remote ip, remote port, local port).

    Linux only (reads /proc); empty elsewhere. Used to see where pymssql's socket
    really went, which reveals a followed redirect whatever the server supports.
    """
    inodes: set[str] = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return {}
    peers: dict[str, tuple[str, int, int]] = {}
    for table, width in (("/proc/self/net/tcp", 8), ("/proc/self/net/tcp6", 32)):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "01" or cols[9] not in inodes:
                continue
            local_hex, remote_hex = cols[1], cols[2]
            ip_hex, port_hex = remote_hex.split(":")
            peers[cols[9]] = (
                hex_ip(ip_hex, width),
                int(port_hex, 16),
                int(local_hex.split(":")[1], 16),
            )
    return peers


def hex_ip(hex_ip: str, width: int) -> str:
    raw = bytes.fromhex(hex_ip)
    # /proc stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, words)
    if words[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, words[12:])
    return socket.inet_ntop(socket.AF_INET6, words)
