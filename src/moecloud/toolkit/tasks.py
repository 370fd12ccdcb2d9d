"""Instruction tasks with exactly checkable answers, in difficulty levels, with seeded splits.

A suite is a list of :class:`Example` (prompt, expected answer, scorer name). The built-in suite
``core`` draws examples from generators; the split of each example (train / val / test) is a pure
function of its prompt and the seed, so splits never overlap and never change between runs or
machines. Users bring their own suite as JSONL, one ``{"prompt", "answer", "scorer"}`` per line.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    scorer: str = "exact"
    task: str = "custom"
    level: int = 1
    split: str = "test"


# -- scorers: (model output, expected answer) -> correct? -------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split())


def score_exact(output: str, expected: str) -> bool:
    return _normalize(output) == _normalize(expected)


def score_casefold(output: str, expected: str) -> bool:
    return _normalize(output).casefold() == _normalize(expected).casefold()


def score_number(output: str, expected: str) -> bool:
    try:
        return abs(float(_normalize(output).replace(",", "")) - float(expected)) < 1e-9
    except ValueError:
        return False


def score_list(output: str, expected: str) -> bool:
    return output.replace(",", " ").split() == expected.replace(",", " ").split()


SCORERS: dict[str, Callable[[str, str], bool]] = {
    "exact": score_exact,
    "casefold": score_casefold,
    "number": score_number,
    "list": score_list,
}


def score(example: Example, output: str) -> bool:
    if example.scorer not in SCORERS:
        raise ValueError(f"unknown scorer {example.scorer!r}; known: {sorted(SCORERS)}")
    return SCORERS[example.scorer](output, example.answer)


# -- generators: (rng, level) -> (prompt, answer) ---------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS_PER_LEVEL = {1: 1, 2: 2, 3: 3}
_LIST_LENGTH = {1: 3, 2: 5, 3: 7}
_CAPITALS = {
    1: {"france": "paris", "japan": "tokyo", "italy": "rome", "spain": "madrid", "egypt": "cairo",
        "peru": "lima", "china": "beijing", "kenya": "nairobi"},
    2: {"germany": "berlin", "russia": "moscow", "canada": "ottawa", "norway": "oslo", "greece": "athens",
        "cuba": "havana", "chile": "santiago", "india": "delhi"},
    3: {"austria": "vienna", "poland": "warsaw", "sweden": "stockholm", "ireland": "dublin",
        "portugal": "lisbon", "turkey": "ankara", "brazil": "brasilia", "mexico": "mexico city"},
}
_UNITS = {1: [("km", "m", 1000), ("kg", "g", 1000)], 2: [("m", "cm", 100), ("l", "ml", 1000)],
          3: [("h", "min", 60), ("min", "s", 60)]}


def group_accuracy(examples: Sequence[Example], correct: Sequence[bool]) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for e, ok in zip(examples, correct, strict=True):
        groups.setdefault(f"{e.task}/l{e.level}", []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def _number(rng: random.Random, level: int) -> int:
    digits = _DIGITS_PER_LEVEL[level]
    return rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _add(rng: random.Random, level: int) -> tuple[str, str]:
    a, b = _number(rng, level), _number(rng, level)
    return f"add {a} + {b}", str(a + b)


def _multiply(rng: random.Random, level: int) -> tuple[str, str]:
    a, b = _number(rng, level), rng.randrange(2, 10)
    return f"multiply {a} * {b}", str(a * b)


def _sort(rng: random.Random, level: int) -> tuple[str, str]:
    items = [rng.randrange(10) for _ in range(_LIST_LENGTH[level])]
    return "sort " + " ".join(map(str, items)), " ".join(map(str, sorted(items)))


def _reverse(rng: random.Random, level: int) -> tuple[str, str]:
    word = "".join(rng.choice(_LETTERS) for _ in range(_LIST_LENGTH[level]))
    return f"reverse {word}", word[::-1]


def _convert(rng: random.Random, level: int) -> tuple[str, str]:
    source, target, factor = rng.choice(_UNITS[level])
    value = rng.randrange(1, 10 if level == 1 else 100)
    return f"convert {value} {source} to {target}", str(value * factor)


def _capital(rng: random.Random, level: int) -> tuple[str, str]:
    country, city = rng.choice(sorted(_CAPITALS[level].items()))
    template = rng.choice(["capital of {}", "what is the capital of {}", "{} capital"])
    return template.format(country), city


GENERATORS: dict[str, tuple[Callable[[random.Random, int], tuple[str, str]], str]] = {
    "add": (_add, "number"),
    "multiply": (_multiply, "number"),
    "sort": (_sort, "list"),
    "reverse": (_reverse, "exact"),
    "convert": (_convert, "number"),
    "capital": (_capital, "casefold"),
}


def split_of(prompt: str, seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """Train / val / test by a hash of the prompt: fixed by seed, disjoint, independent of order."""
    u = _unit_hash(f"{seed}:{prompt}")
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _capital_split(prompt: str, seed: int) -> str:
    """A look-up is memorised, so every country is taught ("capital of X" and one other phrasing);
    its third phrasing is held out (val or test), and that phrasing is taught for other countries."""
    if prompt.startswith("capital of "):
        return "train"
    country = prompt.removeprefix("what is the capital of ").removesuffix(" capital")
    held_out_phrasing = "what" if _unit_hash(f"{seed}:held-out:{country}") < 0.5 else "suffix"
    if held_out_phrasing != ("what" if prompt.startswith("what") else "suffix"):
        return "train"
    return "test" if _unit_hash(f"{seed}:{prompt}") < 0.5 else "val"


def builtin_suite(
    per_level: int = 200, seed: int = 0, tasks: Iterable[str] | None = None, levels: Iterable[int] = LEVELS
) -> list[Example]:
    """Up to ``per_level`` distinct examples for each task and level, each tagged with its split."""
    chosen = list(tasks) if tasks is not None else list(GENERATORS)
    unknown = set(chosen) - set(GENERATORS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {sorted(GENERATORS)}")
    out = []
    for name in chosen:
        generate, scorer = GENERATORS[name]
        for level in levels:
            rng = random.Random(f"{seed}:{name}:{level}")
            seen: dict[str, str] = {}
            for _ in range(per_level * 20):
                if len(seen) >= per_level:
                    break
                prompt, answer = generate(rng, level)
                seen.setdefault(prompt, answer)
            split = _capital_split if name == "capital" else split_of
            out += [Example(p, a, scorer, name, level, split(p, seed)) for p, a in seen.items()]
    return out


def select(examples: Iterable[Example], split: str | None = None, max_level: int | None = None,
           level: int | None = None) -> list[Example]:
    return [
        e for e in examples
        if (split is None or e.split == split)
        and (max_level is None or e.level <= max_level)
        and (level is None or e.level == level)
    ]


def load_jsonl(path: str | Path, seed: int = 0) -> list[Example]:
    """A user suite: each line has prompt, answer, scorer; optional task, level, split (default: by hash)."""
    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"prompt", "answer"} - set(row)
        if missing:
            raise ValueError(f"{path}:{number}: missing {sorted(missing)}")
        scorer = row.get("scorer", "exact")
        if scorer not in SCORERS:
            raise ValueError(f"{path}:{number}: unknown scorer {scorer!r}; known: {sorted(SCORERS)}")
        split = row.get("split") or split_of(row["prompt"], seed)
        if split not in SPLITS:
            raise ValueError(f"{path}:{number}: split must be one of {SPLITS}")
        out.append(Example(row["prompt"], str(row["answer"]), scorer, row.get("task", "custom"),
                           int(row.get("level", 1)), split))
    return out


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(asdict(e)) + "\n" for e in examples))


def load_suite(name_or_path: str, seed: int = 0, per_level: int = 200) -> list[Example]:
    """``core`` (the built-in suite, ``per_level`` examples per task and level) or a JSONL file.

    A larger ``per_level`` only adds examples: those of a smaller one keep their prompts and splits.
    """
    if name_or_path == "core":
        return builtin_suite(per_level=per_level, seed=seed)
    return load_jsonl(name_or_path, seed)


def suite_name(name_or_path: str) -> str:
    return Path(name_or_path).stem if name_or_path != "core" else "core"
