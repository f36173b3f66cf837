"""`python -m atjax.serve INDEX`: a search page for an index, on http://127.0.0.1:8000/.

Routes (GET and HEAD only):
  /                          the page (atjax/search/static/search.html)
  /api/search?q=TEXT&k=N     JSON: ranked files with the time of the best window
  /api/info                  JSON: what the index holds
  /audio/ID                  the audio of indexed file ID (Range requests supported)

Only files the index holds are served, by their integer id: no part of a request is ever
joined to a filesystem path, so crafted paths ('../', %2e%2e%2f, backslashes, absolute
paths) cannot name anything and get 404. At each request the file's real path (symbolic
links resolved) must lie inside the indexed folder (else 403), and its size and
modification time must be those recorded when it was indexed (else 409: a file replaced
or a link re-pointed since then is never read); `open_indexed` checks both. Query length
and result count are bounded; malformed requests get a 4xx with a short JSON reason, never
a traceback. A connection idle for --timeout seconds is closed, and at most
--max-connections are served at once (one thread each); more get 503 at once. Bound to
127.0.0.1 unless --host says otherwise; while bound to loopback, requests whose Host header
names another machine are refused (a DNS-rebinding page cannot read the index). Standard
library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import http
import http.server
import importlib.resources
import io
import json
import logging
import mimetypes
import os
import pathlib
import re
import stat
import sys
import threading
import urllib.parse

from atjax import console
from atjax.search import cli
from atjax.search import query

log = logging.getLogger("atjax.search.server")

MAX_QUERY_CHARS = 500
MAX_K = 100
DEFAULT_K = 10
# Seconds a connection may sit idle (or stall mid-request, or not read a response) before
# it is closed, and connections served at once: each holds a thread.
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 32
# A byte position with more digits than this exceeds any file (2**63 has 19).
_MAX_RANGE_DIGITS = 18
_REFUSED_AUDIO = {"missing": http.HTTPStatus.NOT_FOUND, "outside": http.HTTPStatus.FORBIDDEN,
                  "changed": http.HTTPStatus.CONFLICT}
_AUDIO_ROUTE = re.compile(r"/audio/([0-9]{1,18})")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class _Refusal(Exception):
    def __init__(self, status: http.HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- an indexed file, opened for serving only while it is the file that was indexed -------
#
# A link re-pointed, or a file replaced, after indexing is refused (AudioRefused), never
# read.

class AudioRefused(Exception):
    """Why no file is handed out.

    `kind` is "missing" (no such indexed file, or it is gone), "outside" (its real path
    lies outside the indexed folder) or "changed" (not the file that was indexed).
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclasses.dataclass
class AudioFile:
    """An indexed file as `open_indexed` hands it out."""
    file: io.BufferedReader    # open for reading; the caller closes it
    size: int                  # bytes, as of opening
    name: str                  # the indexed file name (for its media type)
    real_path: pathlib.Path


def open_indexed(root: str | os.PathLike, path: str | os.PathLike, *, size: int,
                 mtime_ns: int, name: str) -> AudioFile:
    """`path`, opened for reading, if it lies inside `root` and is still the regular file
    of `size` bytes and modification time `mtime_ns` that was indexed; else AudioRefused."""
    root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not _inside(real, root):
        raise AudioRefused("outside", "the file lies outside the indexed folder")
    try:
        # No link is followed at the last step (one swapped in since realpath is
        # refused), and a FIFO put in the file's place cannot block the open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AudioRefused("missing", "the indexed file is gone") from None
    except OSError:
        raise AudioRefused("changed", "the indexed file cannot be opened") from None
    try:
        st = os.fstat(fd)
        opened = _opened_path(fd)  # where the file really is, on systems that tell
        if opened is not None and not _inside(opened, root):
            raise AudioRefused("outside", "the file lies outside the indexed folder")
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            raise AudioRefused("changed", "the file changed since it was indexed; "
                               "index the folder again")
        os.set_blocking(fd, True)
        return AudioFile(os.fdopen(fd, "rb"), st.st_size, name, pathlib.Path(real))
    except BaseException:
        os.close(fd)
        raise


def _inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it, compared by path components."""
    return pathlib.PurePath(path).is_relative_to(root)


def _opened_path(fd: int) -> str | None:
    """The path of an open file as the kernel knows it (Linux), else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_audio(searcher: query.Searcher, file_id: int) -> AudioFile:
    """The file behind an id of `searcher`'s index, opened by `open_indexed`."""
    entry = searcher.file_entry(file_id)
    if entry is None or entry.error is not None:
        raise AudioRefused("missing", "not found")
    index = searcher.index
    return open_indexed(index.settings.root, index.resolve(entry), size=entry.size,
                        mtime_ns=entry.mtime_ns, name=entry.path.rsplit("/", 1)[-1])


def audio_path(searcher: query.Searcher, file_id: int) -> pathlib.Path | None:
    """The real path of the file behind an id, if `open_audio` would hand it out."""
    try:
        audio = open_audio(searcher, file_id)
    except AudioRefused:
        return None
    audio.file.close()
    return audio.real_path


def page_html() -> bytes:
    return importlib.resources.files("atjax.search").joinpath("static/search.html").read_bytes()


# -- the HTTP server ----------------------------------------------------------------------

class _BoundedThreadingServer(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once; a connection past
    that gets a 503 and is closed without a thread, so the accept loop never waits."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog (socketserver's 5 drops a browser's burst)
    _BUSY_BODY = json.dumps({"error": "too many open connections"}).encode()
    _BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
             % (len(_BUSY_BODY), _BUSY_BODY))

    def __init__(self, address, handler, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.setblocking(False)  # a client that reads nothing cannot stall us
                request.send(self._BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # the client's doing
            log.debug("%s: %s", client_address, error)
        else:
            log.exception("error serving %s", client_address)


def make_server(searcher: query.Searcher, host: str = "127.0.0.1", port: int = 8000, *,
                max_query_chars: int = MAX_QUERY_CHARS,
                max_k: int = MAX_K, timeout: float = DEFAULT_TIMEOUT,
                max_connections: int = DEFAULT_MAX_CONNECTIONS,
                ) -> http.server.ThreadingHTTPServer:
    """A ThreadingHTTPServer serving `searcher` (port 0 picks a free port).

    A connection idle for `timeout` seconds is closed; at most `max_connections` are
    served at once (one thread each) and any more are answered 503 and closed.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
            or max_connections < 1:
        raise ValueError(f"max_connections must be a positive integer, got "
                         f"{max_connections!r}")
    idle_timeout = timeout
    page = page_html()
    loopback = host in _LOOPBACK_HOSTS

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "atjax-serve"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        # Answer unparseable request lines with a status line too (the base class assumes
        # HTTP/0.9 for them and sends a bare body).
        default_request_version = "HTTP/1.0"
        # Set on each connection's socket: a read or write that waits longer gives up.
        timeout = float(idle_timeout)

        def log_message(self, fmt, *args):
            log.debug("%s %s", self.address_string(), fmt % args)

        def send_error(self, code, message=None, explain=None):
            # The base class answers 501 to methods it has no do_X for and 505 to unknown
            # HTTP versions: both are the client's doing, so 405 and 400. Every error body
            # is a short JSON reason.
            if code == http.HTTPStatus.NOT_IMPLEMENTED:
                code, message = http.HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD"
            elif code == http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
                code, message = http.HTTPStatus.BAD_REQUEST, "unsupported HTTP version"
            status = http.HTTPStatus(code)
            self._json(status, {"error": message or status.phrase}, close=True)

        def do_GET(self):
            self._dispatch(send_body=True)

        def do_HEAD(self):
            self._dispatch(send_body=False)

        def _dispatch(self, send_body: bool):
            self._send_body = send_body
            try:
                self._check_host()
                target = urllib.parse.urlsplit(self.path)
                path = target.path
                if path in ("/", "/index.html"):
                    self._send(http.HTTPStatus.OK, page, "text/html; charset=utf-8")
                elif path == "/api/search":
                    self._search(target.query)
                elif path == "/api/info":
                    files, windows = searcher.counts()  # as of now, not of the last search
                    self._json(http.HTTPStatus.OK, {
                        "files": files, "windows": windows,
                        "window_seconds": searcher.index.settings.window_seconds,
                        "max_query_chars": max_query_chars, "max_k": max_k})
                elif match := _AUDIO_ROUTE.fullmatch(path):
                    self._audio(int(match.group(1)))
                else:
                    raise _Refusal(http.HTTPStatus.NOT_FOUND, "not found")
            except _Refusal as r:
                self._json(r.status, {"error": r.reason})
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                # The client went away (a player seeking elsewhere does that) or stopped
                # reading for `timeout` seconds: a response may be cut off, so close.
                self.close_connection = True
            except Exception:
                log.exception("error answering %r", self.path)
                self._json(http.HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"},
                           close=True)

        def _check_host(self):
            if not loopback:
                return
            host = self.headers.get("Host")
            if host is None:
                return  # HTTP/1.0 clients may omit it
            try:
                name = urllib.parse.urlsplit("//" + host).hostname
            except ValueError:
                raise _Refusal(http.HTTPStatus.BAD_REQUEST, "malformed Host header") from None
            if name not in _LOOPBACK_HOSTS:
                raise _Refusal(http.HTTPStatus.FORBIDDEN, "unexpected Host header")

        def _search(self, query_string: str):
            try:
                params = urllib.parse.parse_qs(query_string, keep_blank_values=True,
                                               max_num_fields=8)
            except ValueError:
                raise _Refusal(http.HTTPStatus.BAD_REQUEST, "too many parameters") from None
            if any(len(v) > 1 for v in params.values()):
                raise _Refusal(http.HTTPStatus.BAD_REQUEST, "repeated parameter")
            query = params.get("q", [""])[0]
            if not query.strip():
                raise _Refusal(http.HTTPStatus.BAD_REQUEST, "missing query (q=...)")
            if len(query) > max_query_chars:
                raise _Refusal(http.HTTPStatus.BAD_REQUEST,
                               f"query longer than {max_query_chars} characters")
            k_text = params.get("k", [str(DEFAULT_K)])[0]
            if not re.fullmatch(r"[0-9]{1,4}", k_text) or not 1 <= int(k_text) <= max_k:
                raise _Refusal(http.HTTPStatus.BAD_REQUEST,
                               f"k must be an integer from 1 to {max_k}")
            try:
                hits = searcher.search(query, int(k_text))
            except ValueError as e:  # the model rejects the text (e.g. nothing to embed)
                raise _Refusal(http.HTTPStatus.BAD_REQUEST, str(e)) from None
            results = [{"id": h.file_id, "path": h.path, "time": h.time, "end": h.end,
                        "score": h.score, "audio": f"/audio/{h.file_id}#t={h.time:g}"}
                       for h in hits]
            self._json(http.HTTPStatus.OK, {"query": query, "k": int(k_text),
                                            "results": results})

        def _audio(self, file_id: int):
            try:
                audio = open_audio(searcher, file_id)
            except AudioRefused as r:
                if r.kind != "missing":
                    log.warning("not serving file id %d: %s", file_id, r.reason)
                raise _Refusal(_REFUSED_AUDIO[r.kind], r.reason) from None
            with audio.file as f:
                size = audio.size
                lo, hi = 0, size - 1
                status = http.HTTPStatus.OK
                if (header := self.headers.get("Range")) is not None:
                    lo, hi = _byte_range(header, size)
                    status = http.HTTPStatus.PARTIAL_CONTENT
                self.send_response(status)
                self.send_header("Content-Type", mimetypes.guess_type(audio.name)[0]
                                 or "application/octet-stream")
                self.send_header("Content-Length", str(hi - lo + 1))
                self.send_header("Accept-Ranges", "bytes")
                if status == http.HTTPStatus.PARTIAL_CONTENT:
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
                self._common_headers()
                self.end_headers()
                if self._send_body:
                    f.seek(lo)
                    _copy(f, self.wfile, hi - lo + 1)

        def _common_headers(self):
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                             "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")

        def _json(self, status, payload, close: bool = False):
            body = json.dumps(payload).encode()
            self._send(status, body, "application/json", close=close)

        def _send(self, status, body: bytes, content_type: str, close: bool = False):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self._common_headers()
            self.end_headers()
            if getattr(self, "_send_body", True) and getattr(self, "command", None) != "HEAD":
                self.wfile.write(body)

    return _BoundedThreadingServer((host, port), Handler, max_connections)


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) byte of a 'bytes=a-b', 'bytes=a-' or 'bytes=-n' Range of a `size`-byte
    file; a _Refusal (416) for anything else or a range outside the file.

    Positions past the file are clamped as RFC 9110 says, however many digits they have.
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        raise _Refusal(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                       "only one 'bytes=a-b' range is supported")
    first, last = (_position(g) for g in match.groups())
    if first is not None:
        lo, hi = first, size - 1 if last is None else min(last, size - 1)
    else:  # bytes=-N: the last N bytes
        lo, hi = max(0, size - last), size - 1
    if lo >= size or lo > hi:
        raise _Refusal(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                       f"range outside the {size}-byte file")
    return lo, hi


def _position(digits: str) -> int | None:
    """A byte position from its digits (None for none); beyond any file if too long to
    convert cheaply (int() refuses more than 4,300 digits)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_RANGE_DIGITS else 10 ** _MAX_RANGE_DIGITS


def _copy(src, dst, length: int) -> None:
    while length > 0:
        chunk = src.read(min(length, 1 << 16))
        if not chunk:
            break
        dst.write(chunk)
        length -= len(chunk)


def _port(text: str) -> int:
    """argparse type: a TCP port number, 0 for any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atjax.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder built by python -m atjax.index")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (0: any free port)")
    parser.add_argument("--model", help="bundle to embed queries with (default: the one "
                        "the index records)")
    parser.add_argument("--approximate", action="store_true", default=None,
                        help="use the approximate (IVF) index")
    parser.add_argument("--timeout", type=cli.positive_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds before an idle or stalled connection is closed "
                             f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--max-connections", type=cli.positive_int,
                        default=DEFAULT_MAX_CONNECTIONS,
                        help="connections served at once, one thread each; more get 503 "
                             f"(default {DEFAULT_MAX_CONNECTIONS})")
    console.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    try:
        searcher = query.open_searcher(args.index, args.model,
                                            approximate=args.approximate)
    except cli.CLI_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        searcher.index.check_model(searcher.model, towers=("text",))
        server = make_server(searcher, args.host, args.port, timeout=args.timeout,
                             max_connections=args.max_connections)
    except OSError as e:  # the port is taken, or the address is not this machine's
        searcher.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except cli.CLI_ERRORS as e:
        searcher.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {args.index} ({searcher.num_files} files, {searcher.num_windows} "
          f"windows) on http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        searcher.close()
    return 0
