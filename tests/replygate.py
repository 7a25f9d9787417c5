"""A loopback proxy between an SMTP client and a real server that holds the
server's replies back until the client has written `hold` BDAT commands, and
can hang up on the client after passing `cut` reply lines. It proves by
count, not by the clock, that a client writes a window of messages before it
reads a reply, and it loses a connection at an exact point of a window."""

from __future__ import annotations

import re
import socket
import threading

from tests.postfix import HOST, free_port

_BDAT = re.compile(rb"^BDAT (\d+)( LAST)?\r\n")


class ReplyGate:
    """One connection at a time, to `HOST:upstream`. After the client's first
    MAIL, replies wait until `hold` BDATs have gone upstream (or `patience`
    seconds, so a client that never fills a window fails its test instead of
    hanging it). `bdats_before_first_reply` records how many had."""

    def __init__(self, upstream: int, hold: int, cut: int | None = None, patience: float = 10.0) -> None:
        self.upstream, self.hold, self.cut, self.patience = upstream, hold, cut, patience
        self.port = free_port()
        self.bdats = 0
        self.bdats_before_first_reply: int | None = None
        self._mail_seen = threading.Event()
        self._filled = threading.Event()
        self._clients: list[socket.socket] = []
        self._listener = socket.create_server((HOST, self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def hang_up(self) -> None:
        """Close the connections open now, as a relay closes an idle one."""
        for client in self._clients:
            _shut(client)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.upstream))
            self._clients.append(client)
            up = threading.Thread(target=self._client_to_server, args=(client, server), daemon=True)
            up.start()
            self._server_to_client(server, client)
            up.join(5)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        """Forward as is, counting BDAT commands (their octets skipped, so a body never counts)."""
        buf, skip = b"", 0
        try:
            while data := client.recv(65536):
                buf += data  # counted before it goes on: the server cannot answer what is not counted yet
                while buf:
                    if skip:
                        taken = min(skip, len(buf))
                        buf, skip = buf[taken:], skip - taken
                        continue
                    end = buf.find(b"\r\n")
                    if end < 0:
                        break
                    line, buf = buf[:end + 2], buf[end + 2:]
                    if line.startswith(b"MAIL FROM"):
                        self._mail_seen.set()
                    if m := _BDAT.match(line):
                        skip = int(m[1])
                        self.bdats += 1
                        if self.bdats >= self.hold:
                            self._filled.set()
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(server)

    def _server_to_client(self, server: socket.socket, client: socket.socket) -> None:
        reader = server.makefile("rb")
        passed = 0
        try:
            while line := reader.readline():
                if self._mail_seen.is_set() and self.bdats_before_first_reply is None:
                    self._filled.wait(self.patience)
                    self.bdats_before_first_reply = self.bdats
                client.sendall(line)
                if self._mail_seen.is_set():
                    passed += 1
                    if self.cut is not None and passed >= self.cut:
                        break
        except OSError:
            pass
        finally:
            reader.close()
            _shut(client)
            _shut(server)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
