"""Tables, plots and a page from a workdir's result store alone.

    python -m w2s_jax.report --workdir=runs/sweep [--out=runs/sweep/report]
    python -m w2s_jax.report --store=gs://bucket/grid --out=report

reads the workdir's store, or a bucket store (config.store). Writes
report.html (self-contained), report.md, the PNGs and tables.json
under --out (default <workdir>/report), each file atomically, so a report
being rewritten is never seen half-written. Prints the markdown tables and
the paths. A missing or empty store is one ``error: ...`` line and a
non-zero exit status, as in `python -m w2s_jax.main`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile

from w2s_jax.core import console, errors
from w2s_jax.report import aggregate, page, plots, store


def write_report(where: str, out: str | None = None) -> dict:
    """Builds and writes the report of a workdir's store, or of a bucket
    store's URL (then `out` is needed); returns {"paths", "markdown",
    "data"}."""
    if store.is_bucket(where) and not out:
        raise errors.UsageError(f"a report of the bucket store {where} needs "
                                f"--out, a local directory for its files")
    records, skipped = store.read_store(where)
    out = out or os.path.join(where, "report")
    data = aggregate.aggregate(records)
    tables = aggregate.tables(data)
    figures, notes = plots.all_plots(data, records)
    summary = page.summary_lines(data, skipped, store.index_path(where))
    markdown = page.to_markdown(summary, tables, figures, notes)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise errors.WorkdirError(f"cannot create report directory {out}: "
                                  f"{err.strerror}") from None
    paths = [_write(out, fig["file"], fig["png"]) for fig in figures]
    paths.append(_write(out, "tables.json", json.dumps(
        {**data, "skipped_lines": skipped}, indent=1).encode()))
    paths.append(_write(out, "report.md", markdown.encode()))
    # The page last: once it is there, every file it describes is too.
    paths.append(_write(out, "report.html", page.to_html(
        summary, tables, figures, notes).encode()))
    return {"paths": paths, "markdown": markdown, "data": data,
            "tables": tables}


def _write(directory: str, name: str, payload: bytes) -> str:
    path = os.path.join(directory, name)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        # mkstemp makes the file private (0600); a report is for sharing.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m w2s_jax.report", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir",
                        help="workdir whose store/index.jsonl to report on")
    source.add_argument("--store", help="a bucket store (config.store), "
                        "gs://<bucket>/<path>; needs --out")
    parser.add_argument("--out", help="output directory "
                        "(default <workdir>/report)")
    args = parser.parse_args(argv)
    if args.store and not args.out:
        parser.error("--store needs --out, a local directory for the report")
    # Our warnings (skipped store lines) as main prints them, one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(console.ConsoleFormatter())
    logging.getLogger("w2s_jax").addHandler(handler)
    try:
        result = write_report(args.workdir or args.store, args.out)
    except errors.ExpectedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_status
    for table in result["tables"]:
        print(aggregate.markdown(table))
    print("wrote:")
    for path in result["paths"]:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
