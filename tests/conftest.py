import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The scripts live at the top of the repo; tests import them as modules.
sys.path.insert(0, str(ROOT))

# model.py loads OpenBLAS before mlx.core, as every script does; importing it first makes that so
# for every test module, whatever it imports first.
import model  # noqa: E402, F401

ON_CPU = model.cpu.ON_CPU
# Tests of the CPU's own machinery (worker processes, OpenBLAS) skip on a GPU; every other test runs
# on any backend, and those that compare numbers pin --dtype=float32.
cpu_only = pytest.mark.skipif(not ON_CPU, reason="the CPU fast path (cpu.py) runs on the CPU only")

WORDS = ("the cat sat on a mat while dogs ran far away from home and every bird sang loud songs "
         "of joy under trees near rivers where fish swim fast").split()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data/tiny/ prepared once from 40 small documents (vocabulary 300); copy it with
    `workspace`."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "corpus").mkdir()
    for d in range(40):
        words = [WORDS[(d * 7 + i * i) % len(WORDS)] for i in range(300)]
        (folder / "corpus" / f"doc{d}.txt").write_text(" ".join(words)
                                                       + f"\n\n  indented line {d}\n")
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--input=corpus", "--dataset=tiny",
                    "--vocab_size=300", "--val_fraction=0.1"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return folder / "data"


def workspace(tmp_path_factory, tiny_data, name="work"):
    """A fresh folder holding its own copy of data/tiny/, to run the scripts in."""
    work = tmp_path_factory.mktemp(name)
    shutil.copytree(tiny_data, work / "data")
    return work


def losses(out_dir):
    """{iteration: training loss} from a run's log.jsonl."""
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if "loss" in r}


class Server:
    """HTTP on 127.0.0.1 serving `files` {path: bytes}, with Range requests; records each request.

    cut[path] = n makes the next response for path drop the connection after n bytes of its body.
    """

    def __init__(self):
        self.files, self.cut, self.requests, self.ranges = {}, {}, [], True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    return self.send_error(404)
                start = (int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range")
                         else 0)
                if start and server.ranges:
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    start = 0
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in server.cut:
                    body = body[:server.cut.pop(self.path)]
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
