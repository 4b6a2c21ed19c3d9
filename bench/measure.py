#!/usr/bin/env python3
"""Measurements shared by the guest benchmarks (called from bench/*.sh).

  measure.py cycles URL PID LIBVIRTD_PID WINDOW PERIOD
      Scrapes URL every PERIOD seconds for WINDOW seconds. Prints
      "agent_ms libvirtd_ms units": CPU per unit, where a unit is one
      successful domain_stats collection when URL is a virtpulse endpoint,
      else one scrape (a peer exporter collects on scrape).
  measure.py scrape URL N [FLOOR_URL]
      N scrapes, 0.2 s apart. Prints "p50_ms p99_ms raw_bytes gzip_bytes
      series domain_series gzip_p50_ms gzip_p99_ms", then with FLOOR_URL
      "floor_p50 floor_p99 floor_gzip_p50 floor_gzip_p99": the same scrapes
      of FLOOR_URL, interleaved with the others so both meet the same load.
  measure.py serve DIR PORT
      The floor: serves DIR/body (DIR/body.gz to clients accepting gzip)
      with a length, through sendfile, on 127.0.0.1:PORT until killed; the
      least any server can spend sending the same bytes.
  measure.py memory PID
      Prints "VmRSS RssAnon VmHWM" in KiB.
  measure.py floor LIBVIRTD_PID N CMD...
      Runs CMD N times. Prints "libvirtd_ms_per_call wall_ms_per_call".
"""
import os
import re
import subprocess
import sys
import time
import urllib.request

TCK = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def get(url, gzip=False):
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def ok_cycles(url):
    body = get(url).decode()
    m = re.search(r'^virtpulse_collections_total\{collector="domain_stats",result="ok"\} (\S+)', body, re.M)
    return float(m.group(1)) if m else None


def cycles(url, pid, lpid, window, period):
    window, period = float(window), float(period)
    c0 = ok_cycles(url)
    a0, l0 = ticks(pid), ticks(lpid)
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        nxt = start + n * period
        if nxt > start + window:
            break
        get(url)
        time.sleep(max(0.0, nxt - time.monotonic()))
    a1, l1 = ticks(pid), ticks(lpid)
    units = (ok_cycles(url) - c0) if c0 is not None else n - 1
    units = max(units, 1)
    print(f"{(a1 - a0) / TCK / units * 1000:.1f} {(l1 - l0) / TCK / units * 1000:.1f} {int(units)}")


def curl_ms(url, gzip):
    # curl, not urllib: Python's chunked-transfer decoder costs ~10 ms per
    # 4 MB body on these machines, more than the server does. With gzip the
    # body is asked for as Prometheus asks, but not decompressed: inflating
    # 4 MB costs curl ~6 ms, the scraper's work, not the server's (Prometheus
    # inflates as it parses).
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", url]
    if gzip:
        cmd[1:1] = ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return float(out) * 1000


def percentiles(lat):
    lat = sorted(lat)
    return lat[len(lat) // 2], lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]


def scrape(url, n, floor_url=None):
    """Latency without and with gzip (as Prometheus asks), body and series."""
    urls = [url] + ([floor_url] if floor_url else [])
    plain = {u: [] for u in urls}
    packed = {u: [] for u in urls}
    for _ in range(int(n)):
        for u in urls:
            plain[u].append(curl_ms(u, False))
            time.sleep(0.1)
            packed[u].append(curl_ms(u, True))
            time.sleep(0.1)
    body = get(url)
    gz = len(get(url, gzip=True))
    lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
    domain = [l for l in lines if l.startswith("libvirt_domain_")]
    (p50, p99), (g50, g99) = percentiles(plain[url]), percentiles(packed[url])
    out = f"{p50:.1f} {p99:.1f} {len(body)} {gz} {len(lines)} {len(domain)} {g50:.1f} {g99:.1f}"
    if floor_url:
        (f50, f99), (h50, h99) = percentiles(plain[floor_url]), percentiles(packed[floor_url])
        out += f" {f50:.1f} {f99:.1f} {h50:.1f} {h99:.1f}"
    print(out)


def serve(directory, port):
    import http.server

    class Floor(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = "body.gz" if "gzip" in self.headers.get("Accept-Encoding", "") else "body"
            with open(os.path.join(directory, name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                if name == "body.gz":
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                self.connection.sendfile(f)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Floor).serve_forever()


def memory(pid):
    vals = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "VmHWM"):
            vals[k] = int(v.split()[0])
    print(f"{vals['VmRSS']} {vals['RssAnon']} {vals['VmHWM']}")


def floor(lpid, n, cmd):
    n = int(n)
    l0 = ticks(lpid)
    t0 = time.monotonic()
    for _ in range(n):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = (time.monotonic() - t0) / n * 1000
    print(f"{(ticks(lpid) - l0) / TCK / n * 1000:.1f} {wall:.1f}")


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "cycles":
        cycles(*args)
    elif what == "scrape":
        scrape(*args)
    elif what == "serve":
        serve(*args)
    elif what == "memory":
        memory(*args)
    elif what == "floor":
        floor(args[0], args[1], args[2:])
    else:
        sys.exit(f"unknown measurement {what}")
