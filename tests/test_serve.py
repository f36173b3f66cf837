"""python -m atjax.serve: the JSON API, audio by id only, and refusals of bad requests."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import socket
import threading
import time

import pytest

from conftest_search import search_kit, search_server  # noqa: F401


@pytest.fixture(scope="module")
def server(search_server):
    return search_server


def _request(httpd, method, target, headers=None):
    conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=10)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for key, value in {"Host": "127.0.0.1", **(headers or {})}.items():
        if value is not None:
            conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def _raw(httpd, data: bytes) -> bytes:
    """Sends bytes as they are; returns the response (headers and Content-Length body)."""
    with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
        s.sendall(data)
        response = b""
        while b"\r\n\r\n" not in response and (chunk := s.recv(65536)):
            response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:]
                          if b": " in line).get(b"Content-Length", 0))
        while len(body) < length and (chunk := s.recv(65536)):
            body += chunk
    return head + b"\r\n\r\n" + body


def test_binds_to_loopback_by_default(server):
    httpd, _, _ = server
    assert httpd.server_address[0] == "127.0.0.1"


def test_page_and_search_api(server):
    httpd, files, _ = server
    status, headers, body = _request(httpd, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="search-form"' in body and b"<audio" in body
    status, _, body = _request(httpd, "GET", "/api/search?q=a+siren+wails&k=3")
    result = json.loads(body)
    assert status == 200 and len(result["results"]) == 3
    top = result["results"][0]
    assert (top["path"], top["time"], top["end"]) == ("long.wav", 10.0, 20.0)
    assert top["audio"] == f"/audio/{top['id']}#t=10"
    status, _, body = _request(httpd, "GET", "/api/info")
    assert status == 200 and json.loads(body)["files"] == 6
    status, headers, body = _request(httpd, "HEAD", "/api/search?q=dog")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_audio_is_served_by_id_with_ranges(server):
    httpd, files, searcher = server
    hit = searcher.search("dog", 1)[0]
    data = files["dog"].read_bytes()
    status, headers, body = _request(httpd, "GET", f"/audio/{hit.file_id}")
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] in ("audio/x-wav", "audio/wav")
    status, headers, body = _request(httpd, "GET", f"/audio/{hit.file_id}",
                                     {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = _request(httpd, "GET", f"/audio/{hit.file_id}", {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, body = _request(httpd, "GET", f"/audio/{hit.file_id}?t=3")
    assert status == 200 and body == data
    for bad in ("bytes=999999999-", "bytes=5-2", "bytes=0-1,5-6", "lines=0-1", "bytes=-"):
        status, _, _ = _request(httpd, "GET", f"/audio/{hit.file_id}", {"Range": bad})
        assert status == 416, bad


@pytest.mark.parametrize("target", [
    "/audio/../../etc/passwd",
    "/audio/..%2f..%2fetc%2fpasswd",
    "/audio/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/audio/%252e%252e%252fetc%252fpasswd",
    "/audio/..%5c..%5csecret.txt",
    "/audio/..\\..\\secret.txt",
    "/audio//etc/passwd",
    "/audio/%2Fetc%2Fpasswd",
    "/audio/1/../../../secret.txt",
    "/audio/1%00",
    "/audio/-1",
    "/audio/999999",
    "/audio/99999999999999999999999",
    "/audio/%31",
    "/audio/",
    "/../secret.txt",
    "/secret.txt",
    "/etc/passwd",
    "/static/../secret.txt",
    "http://127.0.0.1/../../secret.txt",
    "//etc/passwd",
    "/audio/1.wav",
])
def test_crafted_paths_get_404(server, target):
    httpd, _, _ = server
    status, _, body = _request(httpd, "GET", target)
    assert status == 404, target
    assert b"root:" not in body and b"Traceback" not in body


@pytest.mark.parametrize("target, reason", [
    ("/api/search", "missing query"),
    ("/api/search?q=", "missing query"),
    ("/api/search?q=%20%20", "missing query"),
    ("/api/search?q=" + "a" * 501, "longer than 500"),
    ("/api/search?q=dog&k=abc", "k must be"),
    ("/api/search?q=dog&k=0", "k must be"),
    ("/api/search?q=dog&k=101", "k must be"),
    ("/api/search?q=dog&k=-3", "k must be"),
    ("/api/search?q=dog&k=1e3", "k must be"),
    ("/api/search?q=dog&q=cat", "repeated"),
    ("/api/search?" + "&".join(f"x{i}=1" for i in range(20)), "too many"),
])
def test_malformed_queries_get_400(server, target, reason):
    httpd, _, _ = server
    status, headers, body = _request(httpd, "GET", target)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert reason in json.loads(body)["error"]


def test_bounds_and_odd_input_are_handled(server):
    httpd, _, _ = server
    status, _, body = _request(httpd, "GET", "/api/search?q=" + "a" * 500 + "&k=100")
    assert status == 200 and len(json.loads(body)["results"]) == 6
    # Bad percent-encoding and non-UTF-8 bytes are just odd text, not errors.
    for q in ("%ZZ", "%FF%FE", "%F0%9F%90%95+dog", "<script>"):
        status, _, body = _request(httpd, "GET", f"/api/search?q={q}")
        assert status == 200, q


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 400),
    (b"GET / HTTP/x.y\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE /audio/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
    (b"GET /audio/1 HTTP/1.1\r\nHost: attacker.test:8000\r\n\r\n", 403),
    (b"GET / HTTP/1.1\r\nHost: [bad\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
])
def test_malformed_requests_get_4xx_without_traceback(server, request_bytes, status):
    httpd, _, _ = server
    response = _raw(httpd, request_bytes)
    assert response.startswith(b"HTTP/1."), response[:200]
    assert int(response.split(b" ", 2)[1]) == status, response[:200]
    assert b"Traceback" not in response


def test_loopback_names_are_accepted(server):
    httpd, _, _ = server
    port = httpd.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", None):
        status, _, _ = _request(httpd, "GET", "/api/info", {"Host": host})
        assert status == 200, host


def test_concurrent_queries(server):
    httpd, _, _ = server
    words = ["dog", "car", "rain", "bird", "siren", "engine", "bell"] * 3
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda w: _request(httpd, "GET", f"/api/search?q={w}&k=1"), words))
    assert all(status == 200 for status, _, _ in results)
    tops = [json.loads(body)["results"][0]["path"] for _, _, body in results]
    assert tops[4] == "long.wav" and tops[0] == "dog.wav"
    assert tops[:7] == tops[7:14] == tops[14:]


def test_serve_cli(tmp_path, search_kit, monkeypatch, capsys):
    import atjax
    from atjax.search import indexer as index_lib
    from atjax.search import server as serve
    from conftest_search import write_collection

    write_collection(tmp_path / "audio", search_kit)
    index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                          bundle=str(tmp_path / "bundle"), progress=False)
    loaded = []
    monkeypatch.setattr(atjax, "load", lambda p: loaded.append(p) or search_kit.model)
    served, settings = [], []
    real_make_server = serve.make_server

    def interrupt():  # Ctrl-C at once
        raise KeyboardInterrupt

    def make_server(searcher, host, port, **kw):
        httpd = real_make_server(searcher, host, port, **kw)
        served.append(httpd)
        settings.append(kw)
        monkeypatch.setattr(httpd, "serve_forever", interrupt)
        return httpd

    monkeypatch.setattr(serve, "make_server", make_server)
    assert serve.main([str(tmp_path / "idx"), "--port", "0"]) == 0
    out = capsys.readouterr().out
    port = served[0].server_address[1]
    assert f"(6 files, 9 windows) on http://127.0.0.1:{port}/" in out
    assert loaded == [str(tmp_path / "bundle")]
    assert settings[-1] == {"timeout": 10.0, "max_connections": 32}
    assert serve.main([str(tmp_path / "idx"), "--port", "0", "--timeout", "2.5",
                       "--max-connections", "3"]) == 0
    assert settings[-1] == {"timeout": 2.5, "max_connections": 3}
    for flag, value, message in (("--timeout", "0", "--timeout: must be a positive"),
                                 ("--timeout", "inf", "--timeout: must be a positive"),
                                 ("--timeout", "x", "--timeout: expected seconds"),
                                 ("--max-connections", "0", "--max-connections: must be at "
                                  "least 1"),
                                 ("--max-connections", "1.5", "--max-connections: expected")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            serve.main([str(tmp_path / "idx"), flag, value])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert serve.main([str(tmp_path / "audio")]) == 1
    assert "not an atjax audio index" in capsys.readouterr().err
    monkeypatch.setattr(atjax, "load", lambda p: search_kit.other_model)
    assert serve.main([str(tmp_path / "idx"), "--port", "0"]) == 1
    assert "probes differently" in capsys.readouterr().err


def test_info_follows_index_updates(tmp_path, search_kit):
    import threading

    import soundfile

    from atjax.search import indexer as index_lib
    from atjax.search import query as search_lib
    from atjax.search import server as serve
    from conftest_search import write_collection

    write_collection(tmp_path / "audio", search_kit)
    index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                          progress=False)
    with search_lib.Searcher(tmp_path / "idx", search_kit.model) as searcher:
        httpd = serve.make_server(searcher, port=0)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            status, _, body = _request(httpd, "GET", "/api/info")
            assert status == 200 and (json.loads(body)["files"], json.loads(body)["windows"]) \
                == (6, 9)
            sr = search_kit.model.sample_rate
            for word in ("drum", "dog"):
                soundfile.write(tmp_path / "audio" / f"new {word}.wav",
                                search_kit.render(word, 12.0, sr), sr)
            index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                                  progress=False)
            # No search in between: the counts are read as of now.
            status, _, body = _request(httpd, "GET", "/api/info")
            assert status == 200 and (json.loads(body)["files"], json.loads(body)["windows"]) \
                == (8, 13)
        finally:
            httpd.shutdown()
            httpd.server_close()


def test_serve_cli_reports_a_port_in_use(tmp_path, search_kit, monkeypatch, capsys):
    import atjax
    from atjax.search import indexer as index_lib
    from atjax.search import server as serve
    from conftest_search import write_collection

    write_collection(tmp_path / "audio", search_kit)
    index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                          bundle=str(tmp_path / "bundle"), progress=False)
    monkeypatch.setattr(atjax, "load", lambda p: search_kit.model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main([str(tmp_path / "idx"), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        serve.main([str(tmp_path / "idx"), "--port", "70000"])
    assert exit_info.value.code == 2 and "--port: must be from 0 to 65535" in \
        capsys.readouterr().err


def test_range_numbers_of_any_length_get_an_answer(server):
    httpd, files, searcher = server
    hit = searcher.search("dog", 1)[0]
    data = files["dog"].read_bytes()
    huge = "9" * 5000  # more digits than int() converts
    for header, status, want in (
            (f"bytes={huge}-", 416, None),
            (f"bytes={huge}-{huge}", 416, None),
            (f"bytes=0-{huge}", 206, data),            # clamped to the end of the file
            (f"bytes=-{huge}", 206, data),             # more than the file: all of it
            (f"bytes={'0' * 5000}5-{'0' * 5000}9", 206, data[5:10])):
        got, headers, body = _request(httpd, "GET", f"/audio/{hit.file_id}",
                                      {"Range": header})
        assert got == status, header[:40]
        assert b"Traceback" not in body
        if want is not None:
            assert body == want
            assert headers["Content-Range"].endswith(f"/{len(data)}")


@contextlib.contextmanager
def _serving(root, kit, **kw):
    """(server, searcher) over an index of the standard collection under `root`, built
    after `prepare(audio folder)` (a keyword) has run; stopped on exit."""
    from atjax.search import indexer as index_lib
    from atjax.search import query as search_lib
    from atjax.search import server as serve
    from conftest_search import write_collection

    prepare = kw.pop("prepare", None)
    write_collection(root / "audio", kit)
    if prepare is not None:
        prepare(root / "audio")
    index_lib.build_index(root / "audio", kit.model, root / "idx", progress=False)
    with search_lib.Searcher(root / "idx", kit.model) as searcher:
        httpd = serve.make_server(searcher, port=0, **kw)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield httpd, searcher
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)


def _ids(searcher) -> dict[str, int]:
    return {e.path: e.id for e in searcher.index.files()}


def _same_stat(path, like):
    """Gives `path` the modification time of `like` (its size is the caller's to match)."""
    st = os.stat(like)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def test_symlinks_are_served_only_inside_the_indexed_folder(tmp_path, search_kit):
    from atjax.search import server as serve

    outside = tmp_path / "outside"
    outside.mkdir()

    def prepare(audio):
        os.symlink("dog.wav", audio / "link.wav")  # inside the folder: indexed and served

    with _serving(tmp_path, search_kit, prepare=prepare) as (httpd, searcher):
        audio, ids = tmp_path / "audio", _ids(searcher)
        dog = (audio / "dog.wav").read_bytes()
        status, _, body = _request(httpd, "GET", f"/audio/{ids['link.wav']}")
        assert status == 200 and body == dog
        # Re-pointed after indexing, at a file outside of the same size and mtime: only
        # the real path tells it apart.
        twin = outside / "twin.wav"
        twin.write_bytes(b"\x01" * len(dog))
        _same_stat(twin, audio / "dog.wav")
        (audio / "link.wav").unlink()
        os.symlink(twin, audio / "link.wav")
        status, _, body = _request(httpd, "GET", f"/audio/{ids['link.wav']}")
        assert status == 403 and b"\x01\x01" not in body
        assert "outside the indexed folder" in json.loads(body)["error"]
        (audio / "link.wav").unlink()
        os.symlink("/etc/passwd", audio / "link.wav")
        for method in ("GET", "HEAD"):
            status, _, body = _request(httpd, method, f"/audio/{ids['link.wav']}",
                                       {"Range": "bytes=0-"})
            assert status == 403 and b"root:" not in body
        # A folder on the file's path swapped for a link to a copy outside.
        rain = audio / "sub" / "rain.wav"
        copy = outside / "sub"
        copy.mkdir()
        (copy / "rain.wav").write_bytes(rain.read_bytes())
        _same_stat(copy / "rain.wav", rain)
        os.rename(audio / "sub", tmp_path / "moved-sub")
        os.symlink(copy, audio / "sub")
        status, _, _ = _request(httpd, "GET", f"/audio/{ids['sub/rain.wav']}")
        assert status == 403
        assert serve.audio_path(searcher, ids["sub/rain.wav"]) is None
        assert serve.audio_path(searcher, ids["dog.wav"]) == (audio / "dog.wav").resolve()


def test_a_file_replaced_after_indexing_is_not_served(tmp_path, search_kit):
    with _serving(tmp_path, search_kit) as (httpd, searcher):
        audio, ids = tmp_path / "audio", _ids(searcher)
        # Replaced by a link to a text file inside the folder.
        (audio / "dog.wav").unlink()
        os.symlink("notes.txt", audio / "dog.wav")
        status, headers, body = _request(httpd, "GET", f"/audio/{ids['dog.wav']}")
        assert status == 409 and b"not audio" not in body
        assert headers["Content-Type"] == "application/json"
        assert "changed since it was indexed" in json.loads(body)["error"]
        # New content of the same size (a new mtime), and a FIFO, which must not block.
        long = audio / "long.wav"
        long.write_bytes(b"\0" * long.stat().st_size)
        status, _, body = _request(httpd, "GET", f"/audio/{ids['long.wav']}")
        assert status == 409 and body.count(b"\0") < 100
        (audio / "sub" / "rain.wav").unlink()
        os.mkfifo(audio / "sub" / "rain.wav")
        status, _, _ = _request(httpd, "GET", f"/audio/{ids['sub/rain.wav']}")
        assert status == 409
        # Gone: 404. Untouched files are still served.
        (audio / "car.flac").unlink()
        status, _, _ = _request(httpd, "GET", f"/audio/{ids['car.flac']}")
        assert status == 404
        engine = audio / "sub" / "deeper" / "engine.wav"
        status, _, body = _request(httpd, "GET", f"/audio/{ids['sub/deeper/engine.wav']}")
        assert status == 200 and body == engine.read_bytes()


def _server_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _read_until_closed(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_idle_connections_time_out_and_threads_are_bounded(tmp_path, search_kit):
    from atjax.search import server as serve

    with pytest.raises(ValueError, match="timeout must be a positive"):
        serve.make_server(None, port=0, timeout=0)
    with pytest.raises(ValueError, match="max_connections must be a positive"):
        serve.make_server(None, port=0, max_connections=0)
    bound, extra, timeout = 4, 8, 2.0
    with _serving(tmp_path, search_kit, timeout=timeout, max_connections=bound) as (httpd, _):
        before = _server_threads()
        address = httpd.server_address[:2]
        start = time.monotonic()
        held = [socket.create_connection(address, timeout=10) for _ in range(bound)]
        try:
            # A half-sent request holds its connection no longer than an idle one.
            held[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.")
            for _ in range(500):  # until the server has taken them all
                if _server_threads() - before >= bound:
                    break
                time.sleep(0.01)
            assert _server_threads() - before <= bound
            # Every slot is taken: more connections are answered 503 and closed at once,
            # without a thread.
            for _ in range(extra):
                with socket.create_connection(address, timeout=10) as s:
                    answer = _read_until_closed(s)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"too many open connections" in answer
                assert _server_threads() - before <= bound
            assert [_read_until_closed(s) for s in held] == [b""] * bound
        finally:
            for s in held:
                s.close()
        # Closed by the server after the time-out (the client never left).
        assert timeout <= time.monotonic() - start < timeout + 3.0
        for _ in range(50):  # the threads end with their connections
            if _server_threads() <= before:
                break
            time.sleep(0.1)
        assert _server_threads() <= before
        status, _, _ = _request(httpd, "GET", "/api/info")
        assert status == 200
