"""data_process.download without network: a loopback HTTP server (truncated files, dropped
connections, resumption) and a mirror folder."""

import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from common.cli import UserError
from data_process import download

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz")


def payload(name):
    lines = "".join(f'{{"n": {i}, "name": "{name}", "pad": "{i * 7919 % 104729}"}}\n' for i in range(4000))
    return gzip.compress(lines.encode(), mtime=0)


class Server:
    """Serves `files` on 127.0.0.1 with Range support; `drop_once` names files whose first
    response is cut in the middle; every request's (path, Range header) is logged."""

    def __init__(self, files, drop_once=()):
        self.files, self.drop_once, self.log = files, set(drop_once), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.log.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data, start = outer.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in outer.drop_once:
                    outer.drop_once.discard(name)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(files, drop_once=()):
        servers.append(Server(files, drop_once))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def run(raw, mirror, *extra):
    return download.main(["--raw-dir", str(raw), "--domains", "beauty", "--mirror", mirror, *extra])


def test_downloads_verifies_and_skips_complete_files(tmp_path, serve):
    files = {n: payload(n) for n in NAMES}
    server = serve(files)
    run(tmp_path, server.url)
    for n in NAMES:
        assert (tmp_path / n).read_bytes() == files[n]
    assert sorted(server.log) == sorted((n, None) for n in NAMES)
    run(tmp_path, server.url)  # complete files are not fetched again
    assert len(server.log) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(NAMES)


def test_dropped_connection_is_resumed_with_range(tmp_path, serve):
    files = {n: payload(n) for n in NAMES}
    server = serve(files, drop_once=[NAMES[0]])
    run(tmp_path, server.url)
    assert (tmp_path / NAMES[0]).read_bytes() == files[NAMES[0]]
    ranges = [r for n, r in server.log if n == NAMES[0]]
    assert ranges[0] is None and ranges[1] == f"bytes={len(files[NAMES[0]]) // 2}-"


def test_partial_file_in_place_is_completed_not_used(tmp_path, serve):
    files = {n: payload(n) for n in NAMES}
    server = serve(files)
    (tmp_path / NAMES[1]).write_bytes(files[NAMES[1]][:1000])  # left by an interrupted copy
    (tmp_path / (NAMES[0] + ".part")).write_bytes(files[NAMES[0]][:500])
    run(tmp_path, server.url)
    assert (NAMES[1], "bytes=1000-") in server.log and (NAMES[0], "bytes=500-") in server.log
    for n in NAMES:
        assert (tmp_path / n).read_bytes() == files[n]


def test_truncated_file_on_server_is_an_error_and_not_kept(tmp_path, serve):
    files = {n: payload(n) for n in NAMES}
    files[NAMES[1]] = files[NAMES[1]][:-200]
    server = serve(files)
    with pytest.raises(UserError, match="truncated gzip"):
        run(tmp_path, server.url)
    assert sorted(os.listdir(tmp_path)) == [NAMES[0]]


def test_non_gzip_and_missing_file_are_errors(tmp_path, serve):
    server = serve({NAMES[0]: b"<html>not found</html>"})
    with pytest.raises(UserError, match="not a gzip file"):
        run(tmp_path, server.url)
    server = serve({NAMES[0]: payload(NAMES[0])})
    with pytest.raises(UserError, match="HTTP 404"):
        run(tmp_path, server.url)
    assert os.listdir(tmp_path) == [NAMES[0]]


def test_mirror_folder_is_copied_and_a_truncated_copy_refused(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for n in NAMES:
        (mirror / n).write_bytes(payload(n))
    run(tmp_path / "raw", str(mirror))
    assert all((tmp_path / "raw" / n).read_bytes() == (mirror / n).read_bytes() for n in NAMES)
    (mirror / NAMES[0]).write_bytes(payload(NAMES[0])[:-50])
    with pytest.raises(UserError, match="truncated gzip"):
        run(tmp_path / "raw2", str(mirror))
    assert not (tmp_path / "raw2" / NAMES[0]).exists()


def test_offline_fails_at_once_with_one_line(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    url = f"http://127.0.0.1:{port}/amazon/"
    proc = subprocess.run([sys.executable, "-m", "data_process.download", "--raw-dir", str(tmp_path),
                           "--mirror", url], cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{url}reviews_Beauty_5.json.gz" in lines[0] and "RAW_MIRROR" in lines[0]
    assert os.listdir(tmp_path) == []


def test_unknown_category_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown domain 'beautyy'"):
        download.main(["--raw-dir", str(tmp_path), "--domains", "beautyy"])
