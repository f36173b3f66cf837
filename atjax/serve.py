"""`python -m atjax.serve INDEX`: a search page for an index, on http://127.0.0.1:8000/.

Routes (GET and HEAD only):
  /                          the page (atjax/static/search.html)
  /api/search?q=TEXT&k=N     JSON: ranked files with the time of the best window
  /api/info                  JSON: what the index holds
  /audio/ID                  the audio of indexed file ID (Range requests supported)

Only files the index holds are served, by their integer id: no part of a request is ever
joined to a filesystem path, so crafted paths ('../', %2e%2e%2f, backslashes, absolute
paths) cannot name anything and get 404. Query length and result count are bounded;
malformed requests get a 4xx with a short JSON reason, never a traceback. Bound to
127.0.0.1 unless --host says otherwise; while bound to loopback, requests whose Host
header names another machine are refused (a DNS-rebinding page cannot read the index).
Standard library only.
"""

from __future__ import annotations

import argparse
import http
import http.server
import importlib.resources
import json
import logging
import mimetypes
import re
import sys
import urllib.parse

from atjax import index as index_lib
from atjax import search as search_lib

log = logging.getLogger("atjax.serve")

MAX_QUERY_CHARS = 500
MAX_K = 100
DEFAULT_K = 10
_AUDIO_ROUTE = re.compile(r"/audio/([0-9]{1,18})")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class _Refusal(Exception):
    def __init__(self, status: http.HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def page_html() -> bytes:
    return importlib.resources.files("atjax").joinpath("static/search.html").read_bytes()


def make_server(searcher: search_lib.Searcher, host: str = "127.0.0.1", port: int = 8000, *,
                max_query_chars: int = MAX_QUERY_CHARS,
                max_k: int = MAX_K) -> http.server.ThreadingHTTPServer:
    """A ThreadingHTTPServer serving `searcher` (port 0 picks a free port)."""
    page = page_html()
    loopback = host in _LOOPBACK_HOSTS

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "atjax-serve"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        # Answer unparseable request lines with a status line too (the base class assumes
        # HTTP/0.9 for them and sends a bare body).
        default_request_version = "HTTP/1.0"

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
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a player seeking elsewhere does that)
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
            path = searcher.audio_path(file_id)
            if path is None:
                raise _Refusal(http.HTTPStatus.NOT_FOUND, "not found")
            size = path.stat().st_size
            lo, hi = 0, size - 1
            status = http.HTTPStatus.OK
            if (header := self.headers.get("Range")) is not None:
                match = _RANGE.fullmatch(header.strip())
                if match is None or match.groups() == ("", ""):
                    raise _Refusal(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                   "only one 'bytes=a-b' range is supported")
                first, last = match.groups()
                if first:
                    lo, hi = int(first), min(int(last), size - 1) if last else size - 1
                else:  # bytes=-N: the last N bytes
                    lo = max(0, size - int(last))
                if lo >= size or lo > hi:
                    raise _Refusal(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                   f"range outside the {size}-byte file")
                status = http.HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type",
                             mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(hi - lo + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == http.HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
            self._common_headers()
            self.end_headers()
            if self._send_body:
                with open(path, "rb") as f:
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

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        searcher = search_lib.open_searcher(args.index, args.model,
                                            approximate=args.approximate)
    except index_lib.CLI_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        searcher.index.check_model(searcher.model, towers=("text",))
        server = make_server(searcher, args.host, args.port)
    except OSError as e:  # the port is taken, or the address is not this machine's
        searcher.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except index_lib.CLI_ERRORS as e:
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


if __name__ == "__main__":
    sys.exit(main())
