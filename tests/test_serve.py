"""python -m atjax.serve: the JSON API, audio by id only, and refusals of bad requests."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket

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
    from atjax import index as index_lib
    from atjax import serve
    from conftest_search import write_collection

    write_collection(tmp_path / "audio", search_kit)
    index_lib.build_index(tmp_path / "audio", search_kit.model, tmp_path / "idx",
                          bundle=str(tmp_path / "bundle"), progress=False)
    loaded = []
    monkeypatch.setattr(atjax, "load", lambda p: loaded.append(p) or search_kit.model)
    served = []
    real_make_server = serve.make_server

    def interrupt():  # Ctrl-C at once
        raise KeyboardInterrupt

    def make_server(searcher, host, port):
        httpd = real_make_server(searcher, host, port)
        served.append(httpd)
        monkeypatch.setattr(httpd, "serve_forever", interrupt)
        return httpd

    monkeypatch.setattr(serve, "make_server", make_server)
    assert serve.main([str(tmp_path / "idx"), "--port", "0"]) == 0
    out = capsys.readouterr().out
    port = served[0].server_address[1]
    assert f"(6 files, 9 windows) on http://127.0.0.1:{port}/" in out
    assert loaded == [str(tmp_path / "bundle")]
    assert serve.main([str(tmp_path / "audio")]) == 1
    assert "not an atjax audio index" in capsys.readouterr().err
    monkeypatch.setattr(atjax, "load", lambda p: search_kit.other_model)
    assert serve.main([str(tmp_path / "idx"), "--port", "0"]) == 1
    assert "probes differently" in capsys.readouterr().err


def test_info_follows_index_updates(tmp_path, search_kit):
    import threading

    import soundfile

    from atjax import index as index_lib
    from atjax import search as search_lib
    from atjax import serve
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
    from atjax import index as index_lib
    from atjax import serve
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
