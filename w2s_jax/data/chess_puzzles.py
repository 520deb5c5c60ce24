"""Chess puzzles made here: positions from seeded play, solved by Stockfish.

The paper's chess task predicts the first move of a puzzle's solution. Its
lichess puzzles are not mirrored, so puzzles are generated locally and
cached (`config.chess`):

- a position comes from seeded play from the initial position: each ply a
  uniformly random legal move (probability `random_move_prob`) or the
  engine's move at depth 1, for a seeded number of plies in
  [min_plies, max_plies];
- the engine analyses it with two principal variations at `depth` (capped
  at `time_limit` seconds when that is positive); the position is a puzzle
  when the best move beats the second best by at least `margin_cp`
  centipawns (from the side to move; a mate counts as 10000);
- its difficulty is the shallowest depth at which the engine already
  plays the solution (`solve_depth`), recorded with the margin.

Every analysis starts a new engine game (fresh hash) with one thread (set
explicitly, with a 16 MB hash), so a depth-limited search, and the puzzle
set, is the same on every run and machine for one Stockfish version; a binding time limit makes it depend on
the machine's speed, which is why it is off by default. The set is cached
under `cache_dir` in a file named by the settings and the engine's name.

Two task forms (`spec_for`):
- "chess": the paper's form. The text shows the position (the move list,
  as the paper, or the FEN, `view`) and `candidates` moves: the solution
  and other legal moves drawn by a seeded coin, in a seeded order; the
  label is the solution's index. Models score each candidate ("position,
  then Best move: <move>") in mode "choice": a tied decoder by the sequence's
  log-probability under its LM head (so the prediction is the best-scored
  legal move), an encoder by a scalar head.
- "chess_binary": for classifiers, one (position, move) pair per puzzle,
  the solution or another legal move by a seeded coin; label "is this the
  best move".
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from w2s_jax.core import progress
from w2s_jax.core.errors import DataError, UsageError
from w2s_jax.data.tasks import Example, Grouping, TaskSpec

TASKS = ("chess", "chess_binary")
VIEWS = ("moves", "fen")
INSTALL = "sudo apt-get install -y stockfish"
MATE_CP = 10000
# Debian installs the engine outside a user's usual PATH.
_ENGINE_PLACES = ("stockfish", "/usr/games/stockfish")


def is_chess_task(name: str) -> bool:
    return name in TASKS


def find_engine(path: str = "") -> str:
    """The Stockfish binary: `path` if given, else `stockfish` on PATH or
    Debian's /usr/games/stockfish; a clear error with the install command
    when there is none."""
    for place in ((path,) if path else _ENGINE_PLACES):
        found = shutil.which(place)
        if found:
            return found
    where = (f"config.chess.engine={path!r} is not an executable"
             if path else "Stockfish is not installed (no `stockfish` on PATH "
                          "and no /usr/games/stockfish)")
    raise DataError(f"the chess tasks need the Stockfish engine: {where}; "
                    f"install it with `{INSTALL}` (or pass "
                    f"--config.chess.engine=/path/to/stockfish)")


def cache_dir(setting: str = "") -> str:
    return setting or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "w2s_jax", "chess")


# Bump when generation changes, so that older cached sets are not reused.
FORMAT_VERSION = 1
# The settings that decide which puzzles come out (the cache key).
GENERATION_KEYS = ("n_puzzles", "seed", "min_plies", "max_plies",
                   "random_move_prob", "depth", "time_limit", "margin_cp")


def load_puzzles(settings: dict, log=progress.log) -> tuple[list[dict], dict]:
    """(puzzles, provenance): the cached set for these settings, or a new
    one generated and cached (written whole, then renamed into place)."""
    import chess.engine

    engine_path = find_engine(settings.get("engine", ""))
    with chess.engine.SimpleEngine.popen_uci(engine_path) as engine:
        # Set, not left to the engine's defaults: one thread (deterministic
        # search) and a fixed hash size.
        engine.configure({"Threads": 1, "Hash": 16})
        engine_name = engine.id.get("name", "stockfish")
        key = {k: settings[k] for k in GENERATION_KEYS}
        digest = hashlib.sha256(json.dumps(
            {**key, "engine": engine_name, "format": FORMAT_VERSION},
            sort_keys=True).encode()).hexdigest()[:16]
        directory = cache_dir(settings.get("cache_dir", ""))
        path = os.path.join(directory, f"puzzles-{digest}.jsonl")
        provenance = {"source": "generated", "engine": engine_name,
                      "location": path, "settings": key}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f], provenance
        log(f"[chess] generating {settings['n_puzzles']} puzzles with "
            f"{engine_name} at depth {settings['depth']} (cached in {path})")
        puzzles = generate(engine, settings, log=log)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".puzzles-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in puzzles)
    os.replace(tmp, path)
    return puzzles, provenance


def generate(engine, settings: dict, log=progress.log) -> list[dict]:
    """`n_puzzles` puzzles from seeded play (module docstring)."""
    import chess

    n = int(settings["n_puzzles"])
    puzzles, attempt, start = [], 0, time.perf_counter()
    # Most random positions have a clear best move; this bounds the search
    # when the margin is set so high that few do.
    while len(puzzles) < n and attempt < 50 * n:
        rng = np.random.default_rng([int(settings["seed"]), attempt])
        attempt += 1
        board = _play(engine, rng, settings)
        if board is None:
            continue
        puzzle = _solve(engine, board, settings)
        if puzzle is not None:
            puzzles.append({"id": f"p{attempt - 1}", **puzzle})
            if len(puzzles) % 100 == 0:
                rate = len(puzzles) / (time.perf_counter() - start)
                eta = progress.format_duration((n - len(puzzles)) / rate)
                log(f"[chess] {len(puzzles)}/{n} puzzles ({attempt} positions "
                    f"tried, {rate:.1f} puzzles/s, ETA {eta})")
    if len(puzzles) < n:
        raise DataError(f"only {len(puzzles)} of {n} positions tried had a "
                        f"best move {settings['margin_cp']} centipawns ahead; "
                        f"lower config.chess.margin_cp")
    return puzzles


def _limit(settings: dict, depth: int):
    import chess.engine
    time_limit = float(settings["time_limit"])
    return chess.engine.Limit(depth=depth,
                              time=time_limit if time_limit > 0 else None)


def _play(engine, rng: np.random.Generator, settings: dict):
    """A board after seeded play, or None where the game ended first."""
    import chess

    board = chess.Board()
    plies = int(rng.integers(settings["min_plies"], settings["max_plies"] + 1))
    for _ in range(plies):
        legal = list(board.legal_moves)
        # Two draws per ply whatever the branch, so plies stay in step.
        coin, pick = rng.random(), rng.random()
        if coin < settings["random_move_prob"]:
            move = legal[int(pick * len(legal))]
        else:
            move = engine.play(board, _limit(settings, 1), game=object()).move
        board.push(move)
        if board.is_game_over():
            return None
    return board


def _score(info) -> int:
    return info["score"].relative.score(mate_score=MATE_CP)


def _solve(engine, board, settings: dict) -> dict | None:
    """The puzzle at `board` (module docstring), or None."""
    if board.legal_moves.count() < 2:
        return None
    depth = int(settings["depth"])
    top = engine.analyse(board, _limit(settings, depth), multipv=2,
                         game=object())
    if len(top) < 2:
        return None
    best, second = top[0]["pv"][0], top[1]["pv"][0]
    margin = _score(top[0]) - _score(top[1])
    if margin < settings["margin_cp"]:
        return None
    solve_depth = next(
        d for d in range(1, depth + 1)
        if d == depth or engine.play(board, _limit(settings, d),
                                     game=object()).move == best)
    moves = [m.uci() for m in board.move_stack]
    start = board.root()
    return {"fen": board.fen(), "moves": moves,
            "moves_san": start.variation_san(board.move_stack),
            "best": best.uci(), "best_san": board.san(best),
            "second_san": board.san(second), "margin_cp": int(margin),
            "solve_depth": solve_depth,
            "legal_san": sorted(board.san(m) for m in board.legal_moves)}


# ---- the two task forms ----

_PROMPT_END = "Best move:"
_CANDIDATES = re.compile(r"^(.*)\nCandidates: (.*)\n" + re.escape(_PROMPT_END)
                         + r"$", re.S)


def _position(row: dict, view: str) -> str:
    side = "White" if row["fen"].split()[1] == "w" else "Black"
    if view == "fen":
        return f"Chess position (FEN): {row['fen']}\n{side} to move."
    return f"Chess game so far: {row['moves_san']}\n{side} to move."


def _others(row: dict, rng: np.random.Generator, k: int) -> list[str]:
    others = [m for m in row["legal_san"] if m != row["best_san"]]
    return [others[i] for i in rng.permutation(len(others))[:k]]


def format_choice(row: dict, rng: np.random.Generator, view: str,
                  k: int) -> Example | None:
    """The paper's form: the position and k candidate moves, label = the
    solution's index; None for a position with fewer than k legal moves."""
    order = rng.permutation(k)  # drawn first: a fixed number of draws
    others = _others(row, rng, k - 1)
    if len(others) < k - 1:
        return None
    moves = [row["best_san"], *others]
    shown = [moves[i] for i in order]
    return (f"{_position(row, view)}\nCandidates: {' '.join(shown)}\n"
            f"{_PROMPT_END}", int(np.flatnonzero(order == 0)[0]))


def format_binary(row: dict, rng: np.random.Generator, view: str) -> Example:
    """The classifier's form: (position, move), label 1 for the solution."""
    show_best = bool(rng.random() < 0.5)
    move = row["best_san"] if show_best else _others(row, rng, 1)[0]
    if show_best:
        rng.permutation(len(row["legal_san"]) - 1)  # keep draws in step
    return (f"{_position(row, view)}\nMove: {move}\nIs this the best move?",
            int(show_best))


def candidate_texts(text: str) -> list[str]:
    """The sequences mode "choice" scores for a "chess" example: the
    position followed by each candidate move, in the label's order."""
    match = _CANDIDATES.match(text)
    if match is None:
        raise ValueError(f"not a chess candidates example: {text[:80]!r}")
    position, moves = match.groups()
    return [f"{position}\n{_PROMPT_END} {move}" for move in moves.split(" ")]


def spec_for(name: str, settings: dict) -> TaskSpec:
    """The TaskSpec of a chess task under `config.chess` settings."""
    view, k = settings["view"], int(settings["candidates"])
    if name == "chess":
        fmt = lambda row, rng: format_choice(row, rng, view, k)  # noqa: E731
    else:
        fmt = lambda row, rng: format_binary(row, rng, view)  # noqa: E731
    # Seeded play can reach one position twice: its puzzles are one group,
    # so they never straddle the train/test carve or the halves.
    return TaskSpec(name, "generated", None, None, "generated", "generated",
                    fmt, Grouping("position (FEN)", lambda row: [row["fen"]]),
                    difficulty=lambda row: f"depth {row['solve_depth']}",
                    num_classes=k if name == "chess" else 2)


def open_task(name: str, settings: dict, log=progress.log):
    """(spec, split plan, read(split) -> rows) of a chess task, as
    splits.load_task takes them: the puzzle set is one split, carved into
    train pool and test."""
    puzzles, provenance = load_puzzles(settings, log=log)
    plan = {**provenance, "splits": {"train": "generated", "test": "generated"},
            "carve_out": {"from_split": "generated",
                          "reason": "generated puzzles are one set"}}
    return spec_for(name, settings), plan, lambda split: puzzles


def check_settings(settings: dict) -> None:
    """config.chess values a generation can use (UsageError otherwise)."""
    def bad(field, why):
        raise UsageError(f"config.chess.{field}={settings[field]!r} {why}")
    if settings["view"] not in VIEWS:
        bad("view", f"is not one of: {', '.join(VIEWS)}")
    if settings["n_puzzles"] < 4:
        bad("n_puzzles", "must be at least 4")
    if not 0 <= settings["min_plies"] <= settings["max_plies"]:
        bad("min_plies", f"must be >= 0 and <= max_plies "
                         f"({settings['max_plies']})")
    if settings["depth"] < 1:
        bad("depth", "must be at least 1")
    if settings["time_limit"] < 0:
        bad("time_limit", "must be >= 0 seconds (0 = no time cap)")
    if settings["margin_cp"] < 0:
        bad("margin_cp", "must be >= 0 centipawns")
    if not 0.0 <= settings["random_move_prob"] <= 1.0:
        bad("random_move_prob", "must be in [0, 1]")
    if settings["candidates"] < 2:
        bad("candidates", "must be at least 2 (the solution and another "
                          "legal move)")
