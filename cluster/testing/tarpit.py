"""A TCP tarpit: accepts connections and never sends a byte (no SSH banner).

Run as a script so it can be killed like the sshd processes and outlive no one::

    python tarpit.py ADDRESS PORT LOGFILE

It writes the same "Server listening on A port P." line as sshd to LOGFILE,
so the fleet waits for it the same way. Standalone on purpose: no imports
from the package, so it runs whatever the current directory is.
"""

from __future__ import annotations

import socket
import sys


def serve(address: str, port: int, log_path: str) -> int:
    """Accept forever and hold every socket open without answering."""
    with open(log_path, "a", buffering=1) as log:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((address, port))
        except OSError as exc:
            log.write(f"Bind to port {port} on {address} failed: {exc.strerror}.\n")
            return 1
        listener.listen(1024)
        log.write(f"Server listening on {address} port {port}.\n")
        held: list[socket.socket] = []  # kept referenced so they stay open
        while True:
            conn, peer = listener.accept()
            held.append(conn)
            log.write(f"Connection from {peer[0]} port {peer[1]} held\n")


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
