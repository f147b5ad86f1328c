"""Generators of the embedded datasets: date normalisation, addition and string reversal.

Each generator is a pure function of its arguments (a NumPy `Generator` seeded by the caller), so
a dataset is reproducible from its config. Splits are made disjoint by their source strings by
`generate_splits`.

Dates: a date between 1950-01-01 and 2049-12-31 written in one of many human formats, into ISO
8601 ("Saturday 9 May 2018" -> "2018-05-09"). Every format fixes one convention, so the reading
is unambiguous: `d/m/yy` is always day/month/two-digit year (yy >= 50 means 19yy, else 20yy),
`dd.mm.yyyy` day first, `mm-dd-yyyy` month first (US), `yyyy/mm/dd` and `yyyymmdd` year first.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

import numpy as np

DATE_MIN = datetime.date(1950, 1, 1)
DATE_MAX = datetime.date(2049, 12, 31)

_NAMES = {  # months, weekdays (Monday first)
    "en": (
        "January February March April May June July August September October November December",
        "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    ),
    "fr": (
        "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
        "lundi mardi mercredi jeudi vendredi samedi dimanche",
    ),
    "de": (
        "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
        "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
    ),
    "es": (
        "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
        "lunes martes miércoles jueves viernes sábado domingo",
    ),
    "it": (
        "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre "
        "dicembre",
        "lunedì martedì mercoledì giovedì venerdì sabato domenica",
    ),
}

DateFormat = Callable[[datetime.date], str]


def _names(lang: str, date: datetime.date) -> tuple[str, str]:
    months, weekdays = (s.split() for s in _NAMES[lang])
    return months[date.month - 1], weekdays[date.weekday()]


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _english() -> list[DateFormat]:
    def n(d: datetime.date) -> tuple[str, str]:
        return _names("en", d)

    return [
        lambda d: f"{n(d)[1]} {d.day} {n(d)[0]} {d.year}",  # Saturday 9 May 2018
        lambda d: f"{n(d)[1][:3]}, {n(d)[0][:3]} {d.day}, {d.year}",  # Sat, May 9, 2018
        lambda d: f"{n(d)[0]} {d.day}, {d.year}",  # May 9, 2018
        lambda d: f"{n(d)[0]} {_ordinal(d.day)}, {d.year}",  # May 9th, 2018
        lambda d: f"{d.day} {n(d)[0][:3]} {d.year}",  # 9 May 2018
        lambda d: f"{n(d)[1]}, {n(d)[0]} {d.day}, {d.year}",  # Saturday, May 9, 2018
    ]


def _french() -> list[DateFormat]:
    def n(d: datetime.date) -> tuple[str, str]:
        return _names("fr", d)

    day = lambda d: "1er" if d.day == 1 else str(d.day)
    return [
        lambda d: f"{n(d)[1]} {day(d)} {n(d)[0]} {d.year}",  # samedi 9 mai 2018
        lambda d: f"{day(d)} {n(d)[0]} {d.year}",  # 9 mai 2018
        lambda d: f"le {day(d)} {n(d)[0]} {d.year}",  # le 9 mai 2018
    ]


def _german() -> list[DateFormat]:
    def n(d: datetime.date) -> tuple[str, str]:
        return _names("de", d)

    return [
        lambda d: f"{n(d)[1]}, {d.day}. {n(d)[0]} {d.year}",  # Samstag, 9. Mai 2018
        lambda d: f"{d.day}. {n(d)[0]} {d.year}",  # 9. Mai 2018
        lambda d: f"am {d.day}. {n(d)[0]} {d.year}",  # am 9. Mai 2018
    ]


def _spanish() -> list[DateFormat]:
    def n(d: datetime.date) -> tuple[str, str]:
        return _names("es", d)

    return [
        lambda d: f"{n(d)[1]} {d.day} de {n(d)[0]} de {d.year}",  # sábado 9 de mayo de 2018
        lambda d: f"{d.day} de {n(d)[0]} de {d.year}",  # 9 de mayo de 2018
    ]


def _italian() -> list[DateFormat]:
    def n(d: datetime.date) -> tuple[str, str]:
        return _names("it", d)

    return [
        lambda d: f"{n(d)[1]} {d.day} {n(d)[0]} {d.year}",  # sabato 9 maggio 2018
        lambda d: f"{d.day} {n(d)[0]} {d.year}",  # 9 maggio 2018
    ]


def _numeric() -> list[DateFormat]:
    return [
        lambda d: f"{d.day}/{d.month}/{d.year % 100:02d}",  # 9/5/18 (day/month/yy)
        lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 09.05.2018
        lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",  # 2018/05/09
        lambda d: f"{d.month:02d}-{d.day:02d}-{d.year}",  # 05-09-2018 (US: month first)
        lambda d: f"{d.year}{d.month:02d}{d.day:02d}",  # 20180509
    ]


DATE_FORMATS: dict[str, Callable[[], list[DateFormat]]] = {
    "numeric": _numeric,
    "en": _english,
    "fr": _french,
    "de": _german,
    "es": _spanish,
    "it": _italian,
}


def date_example(rng: np.random.Generator, languages: Sequence[str]) -> tuple[str, str]:
    """Draws one (human date, ISO date) pair.

    Args:
      rng: The random generator (advanced by this call).
      languages: Languages of the named formats; numeric formats are always included, as one
          more group drawn as often as each language.

    Returns:
      (source, target), e.g. ("Saturday 9 May 2018", "2018-05-09").
    """
    span = (DATE_MAX - DATE_MIN).days + 1
    date = DATE_MIN + datetime.timedelta(days=int(rng.integers(span)))
    groups = ["numeric", *languages]
    formats = DATE_FORMATS[groups[int(rng.integers(len(groups)))]]()
    return formats[int(rng.integers(len(formats)))](date), date.isoformat()


def addition_example(rng: np.random.Generator, max_digits: int) -> tuple[str, str]:
    """Draws one ("a+b", "a+b evaluated") pair; each operand has 1..max_digits digits."""
    operands = []
    for _ in range(2):
        digits = int(rng.integers(1, max_digits + 1))
        low = 0 if digits == 1 else 10 ** (digits - 1)
        operands.append(int(rng.integers(low, 10**digits)))
    return f"{operands[0]}+{operands[1]}", str(operands[0] + operands[1])


def reverse_example(rng: np.random.Generator, max_length: int) -> tuple[str, str]:
    """Draws one (string of a-z, the string reversed) pair of 1..max_length letters."""
    length = int(rng.integers(1, max_length + 1))
    letters = rng.integers(0, 26, size=length)
    text = "".join(chr(ord("a") + int(i)) for i in letters)
    return text, text[::-1]


def generate_splits(
    draw: Callable[[np.random.Generator], tuple[str, str]],
    sizes: dict[str, int],
    seed: int,
) -> dict[str, list[tuple[str, str]]]:
    """Draws disjoint splits of unique examples (no source string is in two splits or twice).

    Splits are drawn in the order validation, test, train, each from its own stream seeded by
    (seed, split), so the evaluation splits do not change when only the train size changes.

    Args:
      draw: Draws one (source, target) pair from a generator.
      sizes: Examples per split name.
      seed: The dataset seed.

    Returns:
      Split name -> list of (source, target).

    Raises:
      ValueError: when the generator cannot produce that many distinct examples.
    """
    order = sorted(sizes, key=lambda s: ("validation", "test", "train").index(s))
    seen: set[str] = set()
    splits = {}
    for split in order:
        rng = np.random.default_rng([seed, ("validation", "test", "train").index(split)])
        examples: list[tuple[str, str]] = []
        attempts = 0
        while len(examples) < sizes[split]:
            attempts += 1
            if attempts > 20 * sizes[split] + 1000:
                raise ValueError(
                    f"Could only draw {len(examples)} distinct examples for split {split!r} "
                    f"(asked for {sizes[split]}): the generator's space is too small; ask for "
                    "fewer examples or widen it (e.g. more digits, longer strings, languages)."
                )
            source, target = draw(rng)
            if source not in seen:
                seen.add(source)
                examples.append((source, target))
        splits[split] = examples
    return splits
