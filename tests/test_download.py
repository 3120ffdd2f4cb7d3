"""The PCam downloader against a real local HTTP server serving small generated files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading

import pytest

from histo_core.data.download import DownloadError, Resource, download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with Range support; can cut the first response short."""

    files: dict[str, bytes] = {}
    cut_after: int | None = None  # bytes sent before dropping the connection, once
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/").split("?")[0]
        type(self).requests.append(f"{name} {self.headers.get('Range', '')}".strip())
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(body):
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if type(self).cut_after is not None:
            chunk, type(self).cut_after = chunk[: type(self).cut_after], None
            self.wfile.write(chunk)
            self.wfile.flush()
            self.connection.shutdown(2)  # the network drops mid-file
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files, RangeHandler.cut_after, RangeHandler.requests = {}, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _resource(server: str, name: str, payload: bytes) -> Resource:
    RangeHandler.files[f"{name}.gz"] = gzip.compress(payload)
    return Resource(name, f"{server}/{name}.gz?download=1", hashlib.md5(payload).hexdigest())


def test_download_gunzips_and_verifies(server, tmp_path):
    payload = bytes(range(256)) * 4000
    res = _resource(server, "camelyonpatch_level_2_split_valid_y.h5", payload)
    seen = []
    [path] = download([res], tmp_path, progress=lambda name, done, total: seen.append((done, total)))
    assert path.read_bytes() == payload
    assert seen[-1][0] == seen[-1][1] == len(RangeHandler.files[f"{res.name}.gz"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [res.name], "no partial files left behind"
    download([res], tmp_path)  # present and verified: nothing fetched again
    assert len(RangeHandler.requests) == 1


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    payload = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(40000))  # incompressible-ish
    res = _resource(server, "x.h5", payload)
    RangeHandler.cut_after = 300_000
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download([res], tmp_path, timeout=5)
    kept = (tmp_path / "x.h5.gz.part").stat().st_size
    assert 0 < kept <= 300_000
    [path] = download([res], tmp_path)
    assert path.read_bytes() == payload
    assert RangeHandler.requests == ["x.h5.gz", f"x.h5.gz bytes={kept}-"]


def test_a_checksum_mismatch_is_refused_and_cleaned_up(server, tmp_path):
    res = _resource(server, "y.h5", b"real content")
    bad = Resource(res.name, res.url, "0" * 32)
    with pytest.raises(DownloadError, match="does not match the published 0000"):
        download([bad], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_name_the_file_and_status(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing.h5: HTTP 404"):
        download([Resource("missing.h5", f"{server}/missing.h5.gz", "0" * 32)], tmp_path)


def test_cli_download_uses_a_url_template(server, tmp_path, capsys):
    from histo_core.data.download import PCAM_FILES
    from histo_cli.main import main

    name = "camelyonpatch_level_2_split_test_y.h5"
    RangeHandler.files[f"{name}.gz"] = gzip.compress(b"labels")
    PCAM_FILES_BACKUP = dict(PCAM_FILES)
    try:
        PCAM_FILES.update({name: hashlib.md5(b"labels").hexdigest(),
                           "camelyonpatch_level_2_split_test_x.h5": hashlib.md5(b"images").hexdigest()})
        RangeHandler.files["camelyonpatch_level_2_split_test_x.h5.gz"] = gzip.compress(b"images")
        assert main(["data", "download", "pcam", str(tmp_path), "--splits", "test",
                     "--url", server + "/{name}.gz"]) == 0
    finally:
        PCAM_FILES.clear()
        PCAM_FILES.update(PCAM_FILES_BACKUP)
    assert (tmp_path / name).read_bytes() == b"labels"
    assert "verified" in capsys.readouterr().out
