"""The client side of script/test-containers: fixture pages, jobs through
the balancer, and checks of the images downloaded through their presigned
URLs from the host.

  compose_e2e.py pages DIR              write the fixture pages into DIR
  compose_e2e.py render API             three pages (one with every blocker)
                                        and the scripts page: submit, wait,
                                        download, check
  compose_e2e.py batch API N            N jobs at once, all done
  compose_e2e.py submit API PATH        submit one page; print its id
  compose_e2e.py wait API ID [SECONDS]  wait for a job to be done
"""
import io
import json
import pathlib
import sys
import time
import urllib.error
import urllib.request

from PIL import Image

PAGES = "http://fixtures:8000"
# The fonts check's page, as worker/tests/it/fonts.rs draws it: each
# character alone in a cell; a script without a font draws every one as
# the same box a Private Use Area code point draws.
FONTS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "testkit" / "fonts.json")
                   .read_text(encoding="utf-8"))
CELL = FONTS["cell"]
SCRIPTS = [tuple(pair) for pair in FONTS["scripts"]]
COLUMNS = len(SCRIPTS[0][1])


def fail(message):
    print(f"compose e2e: {message}", file=sys.stderr)
    sys.exit(1)


def request(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def write_pages(root):
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        (root / f"{i}.html").write_text(
            f'<!doctype html><title>page {i}</title>'
            f'<body style="margin:0;background:#fff"><h1 style="font-size:80px">page {i}</h1>')
    for name in ("slow", "drain"):
        (root / f"{name}.html").write_text(f"<!doctype html><title>{name}</title><h1>{name}</h1>")

    def row(chars):
        return "".join(f"<span>{c}</span>" for c in chars)

    rows = f"<div>{row(FONTS['missing'])}</div>" + "".join(f"<div>{row(c)}</div>" for _, c in SCRIPTS)
    (root / "scripts.html").write_text(
        "<!doctype html><meta charset=utf-8><style>"
        "html, body { margin: 0; background: #fff; color: #000; }"
        f"div {{ height: {CELL}px; white-space: nowrap; }}"
        f"span {{ display: inline-block; width: {CELL}px; height: {CELL}px; overflow: hidden;"
        f" font-size: {FONTS['font_size']}px; line-height: {CELL}px; text-align: center; vertical-align: top; }}"
        f"</style>{rows}", encoding="utf-8")


def submit(api, path, width=800, height=600, **options):
    # A 503 says the queue did not confirm the job: submit again, as a
    # client should. Under podman, the runtime's DNS stops answering for
    # some seconds whenever a container joins two networks (a worker added
    # by --scale does), which the producer sees as a timeout on SQS.
    for attempt in range(5):
        status, body = request("POST", f"{api}/v1/screenshots",
                               {"url": f"{PAGES}{path}", "width": width, "height": height, **options})
        if status != 503:
            break
        print(f"compose e2e: submitting {path}: HTTP 503, again in 2 s: {body[:200]!r}", file=sys.stderr)
        time.sleep(2)
    if status not in (200, 202):
        fail(f"submitting {path}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)["id"]


def wait(api, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        status, body = request("GET", f"{api}/v1/screenshots/{job_id}")
        if status != 200:
            fail(f"status of {job_id}: HTTP {status}: {body[:300]!r}")
        doc = json.loads(body)
        if doc["status"] == "done":
            return doc
        if doc["status"] != "pending":
            fail(f"{job_id} is {doc['status']}: {doc}")
        if time.monotonic() > deadline:
            fail(f"{job_id} still pending after {timeout} s")
        time.sleep(0.5)


def download(doc):
    """The image, from the host, through its presigned URL."""
    with urllib.request.urlopen(doc["image_url"], timeout=30) as answer:
        if answer.status != 200:
            fail(f"downloading {doc['image_url']}: HTTP {answer.status}")
        return Image.open(io.BytesIO(answer.read())).convert("RGB")


def scripts_without_glyphs(image):
    def cell(row, col):
        return image.crop((col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL)).tobytes()

    # The first row: a code point no font has, then nothing. Chromium may
    # draw the former as a box or as nothing; either way a script without
    # a font draws all its cells alike, as one of these.
    missing, blank = cell(0, 0), cell(0, 1)
    bad = []
    for i, (script, chars) in enumerate(SCRIPTS):
        cells = [cell(i + 1, col) for col in range(COLUMNS)]
        boxes = sum(c == missing for c in cells)
        blanks = sum(c == blank for c in cells) if missing != blank else 0
        if boxes or blanks or len(set(cells)) < COLUMNS:
            bad.append(f"{script} ({chars}): {boxes} boxes, {blanks} blank, {len(set(cells))} distinct of {COLUMNS}")
    return bad


def render(api):
    jobs = [(f"/{i}.html", 800, 600, {}) for i in (1, 2)]
    # The filter lists and the consent rules the image carries, in use.
    jobs.append(("/3.html", 800, 600, {"block_ads": True, "block_trackers": True, "block_cookie_banners": True}))
    jobs.append(("/scripts.html", CELL * COLUMNS, CELL * (len(SCRIPTS) + 1), {}))
    ids = [(submit(api, path, w, h, **options), path, w, h) for path, w, h, options in jobs]
    for job_id, path, w, h in ids:
        image = download(wait(api, job_id))
        if image.size != (w, h):
            fail(f"{path}: image is {image.size}, asked for {(w, h)}")
        if len(set(image.getdata())) < 2:
            fail(f"{path}: the image is one colour")
        if path == "/scripts.html":
            bad = scripts_without_glyphs(image)
            if bad:
                fail(f"scripts without a font in the worker image: {bad}")
        print(f"compose e2e: {path} -> {job_id}: {image.size[0]}x{image.size[1]} PNG downloaded")


def batch(api, n):
    ids = [submit(api, f"/slow.html?delay=1&n={i}") for i in range(n)]
    for job_id in ids:
        download(wait(api, job_id))
    print(f"compose e2e: {n} jobs done")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    mode, arg = argv[1], argv[2]
    if mode == "pages":
        write_pages(arg)
    elif mode == "render":
        render(arg)
    elif mode == "batch":
        batch(arg, int(argv[3]))
    elif mode == "submit":
        print(submit(arg, argv[3]))
    elif mode == "wait":
        wait(arg, argv[3], *(int(t) for t in argv[4:5]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
