#!/usr/bin/env python3
"""Measurements shared by the guest benchmarks (called from bench/*.sh).

  measure.py cycles URL PID LIBVIRTD_PID WINDOW PERIOD
      Scrapes URL every PERIOD seconds for WINDOW seconds. Prints
      "agent_ms libvirtd_ms units": CPU per unit, where a unit is one
      successful domain_stats collection when URL is a virtpulse endpoint,
      else one scrape (a peer exporter collects on scrape).
  measure.py scrape URL N
      N scrapes, 0.2 s apart. Prints "p50_ms p99_ms raw_bytes gzip_bytes
      series domain_series".
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


def scrape(url, n):
    lat = []
    body = b""
    for _ in range(int(n)):
        t = time.monotonic()
        body = get(url)
        lat.append((time.monotonic() - t) * 1000)
        time.sleep(0.2)
    lat.sort()
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    gz = len(get(url, gzip=True))
    lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
    domain = [l for l in lines if l.startswith("libvirt_domain_")]
    print(f"{lat[len(lat) // 2]:.1f} {p99:.1f} {len(body)} {gz} {len(lines)} {len(domain)}")


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
    elif what == "memory":
        memory(*args)
    elif what == "floor":
        floor(args[0], args[1], args[2:])
    else:
        sys.exit(f"unknown measurement {what}")
