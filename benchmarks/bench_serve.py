"""Load benchmark of `hart-unified serve`: N concurrent clients on loopback send text-to-image requests
(one image each) for a bounded time, against a server that batches dynamically and against one that runs
one request at a time, in the same run. Reports images/s, p50/p95 latency and errors per mode.

    python benchmarks/bench_serve.py --clients 64 --duration 25 [--model DIR] [--out results.json]

Each mode starts its own server process (`hart-unified serve` on 127.0.0.1 and a free port), waits for
/health, warms up, runs, and stops it. Traffic goes to 127.0.0.1 only; clients and time are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # loopback only, by design
REPO = Path(__file__).resolve().parents[1]
MAX_CLIENTS, MAX_DURATION = 256, 300.0
PROMPTS = ["a red circle in the top left", "a blue square in the center", "a green triangle at the bottom",
           "the digit 3", "the digit 7", "a yellow circle in the top right and a purple square at the bottom"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "recipes.cli", "serve", "--host", HOST, "--port", str(port), "--log-level", "warning",
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-n", "1",
           "--max-queue", str(max(args.clients, 1) * 2)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


async def load(url: str, clients: int, duration: float, warmup: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    images = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal images
            t = time.perf_counter()
            try:
                r = await client.post("/v1/images/generations", json={"prompt": PROMPTS[i % len(PROMPTS)], "seed": i})
                if r.status_code == 200:
                    images += len(r.json()["data"])
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

        await asyncio.gather(*(one(-1 - i) for i in range(warmup)))  # not counted
        latencies.clear()
        images, errors = 0, {}
        start = time.perf_counter()
        stop = start + duration

        async def client_loop(c: int) -> None:
            i = c
            while time.perf_counter() < stop:  # a request started before the end is waited for
                await one(i)
                i += clients

        await asyncio.gather(*(client_loop(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"images": images, "seconds": round(elapsed, 2), "images_per_s": round(images / elapsed, 2),
            "p50_ms": round(pct(0.50), 1), "p95_ms": round(pct(0.95), 1), "errors": errors}


def run_mode(args: argparse.Namespace, name: str, max_batch: int, max_wait_ms: float) -> dict:
    proc, url = start_server(args, max_batch, max_wait_ms)
    try:
        result = asyncio.run(load(url, args.clients, args.duration, args.warmup))
        health = httpx.get(url + "/health", timeout=10).json()
        result["mean_batch"] = round(health["rows"] / max(health["batches"], 1), 1)
        result["model_s_per_image"] = round(health["busy_s"] / max(health["rows"], 1), 4)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # other processes on the CPU change both modes' numbers: the 1-minute load average says how busy it was
    result.update(mode=name, max_batch=max_batch, max_wait_ms=max_wait_ms, load_after=round(os.getloadavg()[0], 2))
    print(f"{name:>14}: {result['images_per_s']:7.2f} images/s  p50 {result['p50_ms']:7.1f} ms  "
          f"p95 {result['p95_ms']:7.1f} ms  mean batch {result['mean_batch']:4.1f}  "
          f"model {1000 * result['model_s_per_image']:5.1f} ms/image  "
          f"errors {sum(result['errors'].values())} {result['errors'] or ''}  "
          f"({result['images']} images in {result['seconds']} s; load average {result['load_after']})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped default model)")
    # twice the batch: while one batch runs, the next one's requests are already waiting
    p.add_argument("--clients", type=int, default=64, help=f"concurrent clients (1..{MAX_CLIENTS}; default 64)")
    p.add_argument("--duration", type=float, default=25.0, help=f"seconds per mode (at most {MAX_DURATION:g})")
    p.add_argument("--warmup", type=int, default=8, help="requests before timing (default 8)")
    p.add_argument("--max-batch", type=int, default=32, help="the batched server's --max-batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="the batched server's --max-wait-ms (default 10)")
    p.add_argument("--threads", type=int, default=None, help="the servers' --threads (default: torch's)")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION:
        p.error(f"--clients must be in 1..{MAX_CLIENTS} and --duration in (0, {MAX_DURATION:g}]")
    sys.path.insert(0, str(REPO))
    from recipes.machine import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": commit.strip(),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            # the servers inherit it: with other busy processes on the cores, PASSIVE keeps torch's idle
            # OpenMP threads from spinning against them
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
    print(f"{meta['date']}, commit {meta['commit']}, {meta['machine']}; {args.clients} clients, "
          f"{args.duration:g} s per mode, OMP_WAIT_POLICY {meta['OMP_WAIT_POLICY']}", flush=True)
    results = [run_mode(args, "one-at-a-time", 1, 0.0),
               run_mode(args, "batched", args.max_batch, args.max_wait_ms)]
    speedup = results[1]["images_per_s"] / max(results[0]["images_per_s"], 1e-9)
    print(f"batched / one-at-a-time: {speedup:.2f}x images/s")
    if args.out:
        report = {**meta, "clients": args.clients, "duration": args.duration, "modes": results,
                  "speedup": round(speedup, 2)}
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
