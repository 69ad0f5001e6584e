"""Retriever throughput: local BM25 index and the Search-R1 HTTP server, queries/s at batch 1 and 64.

Usage::

    python benchmarks/retriever.py                 # 100k generated documents, prints a markdown table
    python benchmarks/retriever.py --docs 20000 --queries 512

The corpus is `turngym.tools.search.synthetic_corpus` (pseudo-words, Zipf-Mandelbrot frequencies, 30-90
words a document); queries are 2-5 words drawn from random documents. The HTTP rows run the real
server (`python -m turngym.tools.search.server`) in a child process on loopback and query it with
`RetrieverClient` (keep-alive pool) from this process; "x2 clients" runs two client threads at once.

Columns: ``queries/s`` is wall-clock throughput; ``queries per CPU-s`` divides the queries by the CPU
time the answering process used (this process for local rows, the server process for HTTP rows), which
does not depend on how busy a shared machine is. A server with 2 free cores runs two requests at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(fn, queries: list[str], batch: int, topk: int) -> None:
    for i in range(0, len(queries), batch):
        fn(queries[i : i + batch], topk)


def _measure(fn, queries, batch, topk, *, threads: int = 1, cpu=time.process_time) -> tuple[float, float]:
    """``(queries per wall second, queries per CPU second of ``cpu``)``; ``fn`` is a factory if threads > 1."""
    parts = [queries[i::threads] for i in range(threads)]
    fns = [fn() for _ in range(threads)] if threads > 1 else [fn]
    ts = [threading.Thread(target=_run, args=(f, part, batch, topk)) for f, part in zip(fns, parts)]
    c0, t0 = cpu(), time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, used = time.perf_counter() - t0, cpu() - c0
    return len(queries) / wall, len(queries) / max(used, 1e-9)


def retriever_benchmark(
    num_docs: int = 100_000,
    num_queries: int = 2048,
    topk: int = 3,
    http: bool = True,
    cache_dir: str | None = None,
) -> list[tuple[str, int, float, float]]:
    """Measure retriever throughput; returns rows ``(backend, batch, queries_per_s, queries_per_cpu_s)``."""
    from turngym.tools.search import BM25Index, RetrieverClient, synthetic_corpus, write_corpus
    from turngym.tools.search.corpus import sample_queries
    from turngym.tools.search.server import spawn

    rows: list[tuple[str, int, float, float]] = []
    t0 = time.perf_counter()
    docs = synthetic_corpus(num_docs, seed=0)
    print(f"generated {num_docs} docs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    queries = sample_queries(docs, num_queries, seed=1)
    single = queries[: max(64, num_queries // 4)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, docs)
        cache = cache_dir or str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        index = BM25Index.build(corpus, cache_dir=cache)
        print(
            f"index: {time.perf_counter() - t0:.1f}s (from cache: {index.loaded_from_cache})", file=sys.stderr
        )
        index.search(queries[:64], topk)  # warm up
        rows.append(("local BM25Index", 1, *_measure(index.search, single, 1, topk)))
        rows.append(("local BM25Index", 64, *_measure(index.search, queries, 64, topk)))
        if http:
            proc, url = spawn(corpus, topk=topk, cache_dir=cache)
            try:
                server_cpu = lambda: _proc_cpu_s(proc.pid)
                client = RetrieverClient(url, timeout_s=60)
                client.search(queries[:64], topk)  # warm up the connection and the server
                rows.append(("HTTP server", 1, *_measure(client.search, single, 1, topk, cpu=server_cpu)))
                rows.append(("HTTP server", 64, *_measure(client.search, queries, 64, topk, cpu=server_cpu)))
                make = lambda: RetrieverClient(url, timeout_s=60).search
                rows.append(
                    (
                        "HTTP server, x2 clients",
                        64,
                        *_measure(make, queries, 64, topk, threads=2, cpu=server_cpu),
                    )
                )
                client.close()
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return rows


def markdown_table(rows: list[tuple[str, int, float, float]], num_docs: int, topk: int) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"Retriever throughput ({num_docs:,} documents, top-{topk}, {os.cpu_count()} cores, load {load:.1f})",
        "",
        "| backend | batch | queries/s | queries per CPU-s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {batch} | {qps:,.0f} | {qpc:,.0f} |" for name, batch, qps, qpc in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=100_000, help="corpus size (default 100000)")
    p.add_argument("--queries", type=int, default=2048, help="queries per batch-64 measurement")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--no-http", action="store_true", help="skip the HTTP server rows")
    p.add_argument("--cache-dir", default=None, help="index cache (default: a temporary directory)")
    args = p.parse_args(argv)
    rows = retriever_benchmark(
        args.docs, args.queries, args.topk, http=not args.no_http, cache_dir=args.cache_dir
    )
    print(markdown_table(rows, args.docs, args.topk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
