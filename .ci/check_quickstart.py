"""Compare the quickstart's results with the figures published in
docs/quickstart.md, so the main job can never silently change or break.

    python .ci/check_quickstart.py runs/quickstart docs/quickstart.md

Reads the per-seed table (gold test accuracy of weak, ceiling and each
loss's student; PGR per seed) and the PGR of mean accuracies from the
document, and the same numbers from the run's results files; every figure
must agree to the digits the document prints. Exits 1 naming each mismatch.
"""
import glob
import json
import os
import re
import sys


def published(doc_path: str) -> dict:
    """{(seed, column): text} from the per-seed table, and
    {("pgr_of_means", loss): text} from the summary table."""
    with open(doc_path) as f:
        text = f.read()
    figures = {}
    per_seed = re.search(r"^\| seed \|(.*)\|\n\|[-| ]+\|\n((?:\|.*\|\n)+)", text, re.M)
    columns = [c.strip() for c in per_seed.group(1).split("|")]
    for row in per_seed.group(2).strip().splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        for column, cell in zip(columns, cells[1:]):
            figures[(int(cells[0]), column)] = cell
    summary = re.search(r"^\| loss \| comparison \|.*\n\|[-| ]+\|\n((?:\|.*\|\n)+)", text, re.M)
    for row in summary.group(1).strip().splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        figures[("pgr_of_means", cells[0])] = cells[5]
    return figures


def measured(workdir: str) -> dict:
    (sweep,) = glob.glob(os.path.join(workdir, "results", "sweep_*.json"))
    with open(sweep) as f:
        summary = json.load(f)
    figures = {}
    for loss, entry in summary["losses"].items():
        figures[("pgr_of_means", loss)] = entry["comparisons"]["w2s"]["accuracy"]["pgr_of_means"]
        for name in entry["runs"]:
            with open(os.path.join(workdir, "results", name + ".json")) as f:
                run = json.load(f)
            seed, gold = run["seed"], run["gold_test"]
            figures[(seed, "weak")] = gold["weak"]["accuracy"]
            figures[(seed, "ceiling")] = gold["ceiling"]["accuracy"]
            figures[(seed, f"w2s {loss}")] = gold["w2s"]["accuracy"]
            figures[(seed, f"PGR {loss}")] = run["comparisons"]["w2s"]["pgr"]["accuracy"]
    return figures


def main(workdir: str, doc_path: str) -> int:
    expected, got = published(doc_path), measured(workdir)
    bad = []
    for key, text in sorted(expected.items(), key=str):
        digits = len(text.split(".")[1]) if "." in text else 0
        value = got.get(key)
        shown = "missing" if value is None else f"{value:.{digits}f}"
        if shown != text:
            bad.append(f"{key}: docs {text}, this run {shown}")
    if bad:
        print(f"quickstart differs from {doc_path}:\n  " + "\n  ".join(bad))
        return 1
    print(f"quickstart matches {doc_path}: {len(expected)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
