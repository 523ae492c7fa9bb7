"""`streamsr view`: a local deep-zoom viewer of a job (LR input vs output), a DZI, or an OME-Zarr/zarr image.

A small HTTP server on 127.0.0.1 only (stdlib ThreadingHTTPServer) serves a page with two OpenSeadragon
viewers (vendored in static/openseadragon, nothing is fetched at run time): the LR input upsampled x4
and the output, side by side or overlaid with a slider, zoom and pan synchronised, plus the job's
settings and progress polled from /api/status. What a path shows is views.py's; tiles are tiles.py's.

Who may read: every endpoint lives under /<token>/, a random token made per run and printed in the URL
(as notebook servers do; the page uses relative URLs only). Another user of this machine, or a page in
the browser that guesses the port, gets 403 without it: the images and the absolute paths in
/api/status are shown only to the page opened from the printed URL. A Host header that is not this
server's (DNS rebinding) is refused too.

Endpoints (each under /<token>):
    GET /                                       the page (static/index.html)
    GET /static/<file>                          static/ (JS, CSS, OpenSeadragon and its images)
    GET /api/info                               what is shown: kind, size, layers, tile URLs (JSON)
    GET /api/status                             job progress and settings (job_status + tile state, JSON)
    GET /dzi/<layer>.dzi                        DeepZoom descriptor of layer `output` or `lr`
    GET /dzi/<layer>_files/<level>/<col>_<row>.png   one 256 px tile (no overlap), rendered on the fly
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import BadInput
from .views import View, open_view

HOST = "127.0.0.1"  # the viewer never listens beyond this machine
RENDER_THREADS = 2  # tiles rendered at once (the rest of the requests wait)
STATIC = Path(__file__).resolve().parent / "static"
TILE_RE = re.compile(r"^/dzi/(\w+)_files/(\d+)/(\d+)_(\d+)\.(\w+)$")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".webp": "image/webp", ".txt": "text/plain; charset=utf-8", ".json": "application/json",
         ".svg": "image/svg+xml"}


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server of one View; at most RENDER_THREADS tiles are rendered at once."""

    daemon_threads = True

    def __init__(self, address, view: View, *, token: str, verbose: bool = False):
        self.view, self.verbose = view, verbose
        self.token = token  # every URL starts with /<token>/ (module docstring)
        self.render_slots = threading.BoundedSemaphore(RENDER_THREADS)
        super().__init__(address, ViewerHandler)


class ViewerHandler(BaseHTTPRequestHandler):
    """One request: the page, static files, the JSON API, DeepZoom descriptors and tiles."""

    server: ViewerServer
    server_version = "streamsr-view"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def send_body(self, code: int, body: bytes, ctype: str, cache: str = "no-cache") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, data: dict) -> None:
        self.send_body(200, json.dumps(data, default=str).encode(), "application/json", "no-store")

    def not_found(self) -> None:
        self.send_body(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self):
        self.do_GET()

    def host_allowed(self) -> bool:
        """The Host header names this server (127.0.0.1, localhost or [::1] with its port): a page of another
        site that rebinds its DNS name to 127.0.0.1 sends its own name and is refused (DNS rebinding)."""
        host = (self.headers.get("Host") or "").strip().lower()
        port = self.server.server_address[1]
        return host in {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def without_token(self, path: str) -> str | None:
        """`path` after its /<token> prefix, or None when it does not start with this run's token."""
        first, slash, rest = path[1:].partition("/")
        if not secrets.compare_digest(first.encode(), self.server.token.encode()):
            return None
        return "/" + rest if slash else ""

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        view = self.server.view
        if not self.host_allowed():
            return self.send_body(403, b"forbidden: the Host header must be 127.0.0.1 or localhost with this "
                                       b"server's port\n", "text/plain; charset=utf-8")
        if path == "/favicon.ico":
            return self.send_body(204, b"", "image/x-icon")
        path = self.without_token(path)
        if path is None:
            return self.send_body(403, b"forbidden: open the URL that `streamsr view` printed (it holds a token)\n",
                                  "text/plain; charset=utf-8")
        if path == "":  # /<token>: the page's relative URLs need the trailing slash
            self.send_response(301)
            self.send_header("Location", f"/{self.server.token}/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        try:
            if path in ("/", "/index.html"):
                return self.static("index.html")
            if path.startswith("/static/"):
                return self.static(path[len("/static/"):])
            if path == "/api/info":
                return self.send_json(view.info())
            if path == "/api/status":
                return self.send_json(view.status())
            if path.startswith("/dzi/") and path.endswith(".dzi"):
                layer = view.layers.get(path[len("/dzi/"):-len(".dzi")])
                return self.send_body(200, layer.dzi(), "application/xml") if layer else self.not_found()
            match = TILE_RE.match(path)
            if match:
                return self.tile(*match.groups())
            return self.not_found()
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as exc:  # one bad request must not stop the server
            print(f"streamsr view: error serving {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            try:
                self.send_body(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain; charset=utf-8")
            except OSError:
                pass

    def static(self, rel: str) -> None:
        file = (STATIC / rel).resolve()
        if STATIC not in file.parents or not file.is_file():
            return self.not_found()
        self.send_body(200, file.read_bytes(), TYPES.get(file.suffix.lower(), "application/octet-stream"))

    def tile(self, name: str, level: str, col: str, row: str, ext: str) -> None:
        layer = self.server.view.layers.get(name)
        if layer is None:
            return self.not_found()
        with self.server.render_slots:
            body = layer.tile_png(int(level), int(col), int(row), ext)
        if body is None:
            return self.not_found()
        self.send_body(200, body, TYPES.get("." + ext.lower(), "application/octet-stream"))


# ---- API and command --------------------------------------------------------------------------------
def serve(path, *, port: int = 0, open_browser: bool = False, cache_mb: int = 256,
          verbose: bool = False) -> tuple[ViewerServer, str]:
    """Serve `path` (job dir, x16 job dir, .dzi, OME-Zarr / zarr) on 127.0.0.1:`port` (0: any free port),
    at a URL holding a random token (module docstring): http://127.0.0.1:PORT/TOKEN/.

    The server already runs in a daemon thread when this returns (server, url); stop it with
    `server.shutdown(); server.server_close()`. Raises BadInput for a path it cannot show and OSError
    when the port is taken.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput(f"--port must be 0 (any free port) or 1..65535, got {port!r}")
    view = open_view(path, cache_mb=cache_mb)
    server = ViewerServer((HOST, port), view, token=secrets.token_urlsafe(24), verbose=verbose)
    url = f"http://{HOST}:{server.server_address[1]}/{server.token}/"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="streamsr-view",
                     daemon=True).start()
    if open_browser:
        webbrowser.open(url)
    return server, url


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `streamsr view`."""
    parser.add_argument("path", help="job dir (also while it runs), x16 job dir, .dzi file, or OME-Zarr/zarr store")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")
    parser.add_argument("--cache-mb", type=int, default=256, help="memory for rendered tiles (default 256 MiB)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(args=None) -> int:
    """`streamsr view`: serve until Ctrl-C. `args` is an argparse.Namespace (from the CLI) or an argv list."""
    if args is None or isinstance(args, (list, tuple)):
        parser = add_arguments(argparse.ArgumentParser(prog="streamsr view", description=__doc__.splitlines()[0]))
        args = parser.parse_args(args)
    server, url = serve(args.path, port=args.port, open_browser=getattr(args, "open", False),
                        cache_mb=getattr(args, "cache_mb", 256), verbose=getattr(args, "verbose", False))
    print(f"streamsr view: {server.view.kind} {server.view.title} at {url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("streamsr view: stopped", file=sys.stderr)
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BadInput as exc:
        print(f"streamsr view: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
