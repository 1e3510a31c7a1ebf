"""Fixture pages for script/test-containers: the files of a directory,
each after an optional delay (`/slow.html?delay=8`), and `/hits/<path>`,
how many times a page was asked for."""
import collections
import http.server
import pathlib
import sys
import threading
import time
import urllib.parse

ROOT = pathlib.Path(sys.argv[1])
HITS = collections.Counter()
LOCK = threading.Lock()


class Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/hits/"):
            with LOCK:
                body = str(HITS["/" + url.path[len("/hits/"):]]).encode()
            return self.answer(200, "text/plain", body)
        with LOCK:
            HITS[url.path] += 1
        delay = float(urllib.parse.parse_qs(url.query).get("delay", ["0"])[0])
        time.sleep(min(delay, 60))
        page = (ROOT / url.path.lstrip("/")).resolve()
        if ROOT.resolve() not in page.parents or not page.is_file():
            return self.answer(404, "text/plain", b"not found")
        self.answer(200, "text/html; charset=utf-8", page.read_bytes())

    def answer(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Pages).serve_forever()
