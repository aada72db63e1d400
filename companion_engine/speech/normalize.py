"""English text normalisation for speech: numbers, money, times, dates, units as words.

TTS engines read digits their own way ("$29.50" as "dollar twenty nine point
five zero", "1st" as "one s t", "12:30" as "twelve thirty" or "twelve colon
thirty"). ``normalize_en`` writes them out the way a person says them, so every
voice says the same thing. It is the rule set behind the ``normalize`` speech
cleaner; another language gets its own cleaner (see docs/voice.md).

In order (earlier rules see the original text, so "$1,000" is money, not a
number followed by a comma): money, percentages, dates, times, ordinals,
numbers with units, then any remaining number (grouped thousands, decimals,
signs). Version strings (``v1.2.3``), numbers glued to letters (``mp3``, ``4K``)
and long digit runs that are codes (phone numbers, ids of more than 15 digits)
are left alone or read digit by digit.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_MONTH_ABBR = {m[:3].lower(): m for m in _MONTHS} | {"sept": "September"}


def cardinal(n: int) -> str:
    """``1234`` -> ``one thousand two hundred thirty-four``."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {cardinal(rest)}" if rest else "")
    for value, word in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{cardinal(high)} {word}" + (f" {cardinal(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal(n: int) -> str:
    """``21`` -> ``twenty-first``."""
    words = cardinal(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else \
        words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head}{sep}{last}"


def year(n: int) -> str:
    """``1980`` -> ``nineteen eighty``; ``2005`` -> ``two thousand five``; ``2024`` ->
    ``twenty twenty-four``."""
    if 1000 <= n <= 9999 and not (2000 <= n <= 2009) and n % 1000 != 0:
        high, low = divmod(n, 100)
        if low == 0:
            return f"{cardinal(high)} hundred"
        return f"{cardinal(high)} {'oh ' + _ONES[low] if low < 10 else cardinal(low)}"
    return cardinal(n)


def digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s if d.isdigit())


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def number(text: str) -> str:
    """A number as written (``1,234.5``, ``-3``, ``.5``) in words."""
    sign = ""
    if text[0] in "-−":
        sign, text = "minus ", text[1:]
    elif text[0] == "+":
        sign, text = "plus ", text[1:]
    whole, _, frac = text.partition(".")
    if len(whole.replace(",", "")) > 15:
        return sign + digits(whole) + (f" point {digits(frac)}" if frac else "")
    head = cardinal(_int(whole)) if whole else "zero"
    return sign + head + (f" point {digits(frac)}" if frac else "")


# --- money ------------------------------------------------------------------------------------

_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "", ""),
             "₹": ("rupee", "rupees", "paisa", "paise")}
_MAGNITUDE = {"k": "thousand", "m": "million", "mn": "million", "b": "billion", "bn": "billion",
              "thousand": "thousand", "million": "million", "billion": "billion",
              "trillion": "trillion"}
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_MONEY = re.compile(
    rf"(?<![\w$€£¥₹])(-)?([$€£¥₹])\s?({_NUM})(?:\s?(k|mn|m|bn|b|thousand|million|billion|trillion)"
    r"\b)?(?![\d.,]\d)", re.I)


def _money(m: re.Match[str]) -> str:
    neg, sym, amount, mag = m.groups()
    one, many, sub_one, sub_many = _CURRENCY[sym]
    whole, _, frac = amount.partition(".")
    prefix = "minus " if neg else ""
    if mag:
        return f"{prefix}{number(amount)} {_MAGNITUDE[mag.lower()]} {many}"
    n = _int(whole)
    words = f"{prefix}{cardinal(n)} {one if n == 1 else many}"
    if frac and len(frac) == 2 and sub_one:
        cents = int(frac)
        if n == 0 and cents:  # $0.50: fifty cents
            return f"{prefix}{cardinal(cents)} {sub_one if cents == 1 else sub_many}"
        if cents:
            words += f" {cardinal(cents)}"
        return words
    if frac:
        return f"{prefix}{number(amount)} {many}"
    return words


# --- percentages, units -------------------------------------------------------------------------

_PERCENT = re.compile(rf"(?<![\w.])([-+−]?(?:{_NUM}))\s?%")
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter",
    "centimeters"), "mm": ("millimeter", "millimeters"), "mi": ("mile", "miles"),
    "ft": ("foot", "feet"), "in": ("inch", "inches"), "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"), "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"), "l": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"), "mph": ("mile per hour", "miles per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"), "kph": ("kilometer per hour",
    "kilometers per hour"), "h": ("hour", "hours"), "hr": ("hour", "hours"),
    "hrs": ("hours", "hours"), "min": ("minute", "minutes"), "s": ("second", "seconds"),
    "sec": ("second", "seconds"), "ms": ("millisecond", "milliseconds"),
    "kb": ("kilobyte", "kilobytes"), "mb": ("megabyte", "megabytes"),
    "gb": ("gigabyte", "gigabytes"), "tb": ("terabyte", "terabytes"),
    "ghz": ("gigahertz", "gigahertz"), "mhz": ("megahertz", "megahertz"),
    "hz": ("hertz", "hertz"), "kw": ("kilowatt", "kilowatts"), "w": ("watt", "watts"),
    "v": ("volt", "volts"), "°c": ("degree Celsius", "degrees Celsius"),
    "°f": ("degree Fahrenheit", "degrees Fahrenheit"), "°": ("degree", "degrees"),
}
#: Units that need no space to count (``5km``); the rest need one (``5 in`` is not inches
#: unless followed by a non-letter, which ``\b`` checks).
_UNIT_RE = re.compile(
    rf"(?<![\w.])([-−]?(?:{_NUM}))(?:\s?(°[CF]|°)|\s?(km/h|[A-Za-z]{{1,3}})\b(?![-'’]\w))")
_AMBIGUOUS_UNITS = frozenset({"in", "m", "s", "h", "g", "l", "w", "v", "min"})


def _unit(m: re.Match[str]) -> str:
    value, degree, unit = m.groups()
    key = (degree or unit or "").lower()
    if key not in _UNITS:
        return m.group(0)
    raw = m.group(0)
    if unit and key in _AMBIGUOUS_UNITS:
        glued = raw[len(value)] != " "
        # "5 m" or "5m" is meters, "5 in the box" is not inches: only glued, or a
        # capitalised unit like "5 W"/"5 V", or a line that ends there.
        if not glued and not (unit.isupper() and key in {"w", "v"}):
            return m.group(0)
        if key == "s" and not glued:
            return m.group(0)
    n_text = number(value)
    singular = value.lstrip("-−") in ("1", "1.0")
    one, many = _UNITS[key]
    return f"{n_text} {one if singular else many}"


# --- times and dates ----------------------------------------------------------------------------

_TIME = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\d:])"
                   r"(?:\s?([AaPp])\.?\s?[Mm]\.?(?![a-z]))?")


def _time(m: re.Match[str]) -> str:
    hour, minute, _sec, half = m.groups()
    h, mi = int(hour), int(minute)
    suffix = f" {half.lower()} m" if half else ""
    if half:
        hours = cardinal(h % 12 or 12)
    else:
        hours = cardinal(h) if h else "zero"
    if mi == 0:
        if half:
            return f"{hours}{suffix}"
        return f"{hours} o'clock" if 1 <= h <= 12 else f"{hours} hundred"
    minutes = f"oh {_ONES[mi]}" if mi < 10 else cardinal(mi)
    return f"{hours} {minutes}{suffix}"


_AMPM = re.compile(r"(?<![\w.])(1[0-2]|0?[1-9])\s?([AaPp])\.?[Mm]\.?(?![a-z])")
_ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?![\d-])")
_US_DATE = re.compile(r"(?<![\d/])(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(\d{4})(?![\d/])")
_MONTH_DAY = re.compile(
    r"\b(Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?\s+(\d{1,2})(?:st|nd|rd|th)?"
    r"(?:,?\s+(\d{4}))?\b")
_DAY_MONTH = re.compile(
    r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?(Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|"
    r"May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\b"
    r"\.?(?:,?\s+(\d{4}))?")
_YEAR_CONTEXT = re.compile(r"\b(in|of|since|from|by|until|till|during|year|around|circa|"
                           r"before|after|early|late|mid)\s+(1[1-9]\d\d|20\d\d)\b(?!\s?%)", re.I)
_DECADE = re.compile(r"\b(1[1-9]|20)(\d)0s\b")


def _month(name: str) -> str:
    return _MONTH_ABBR.get(name[:4].lower().rstrip(".")) or _MONTH_ABBR[name[:3].lower()]


def _date(month: int, day: int, yr: str | None) -> str:
    out = f"{_MONTHS[month - 1]} {ordinal(day)}"
    return f"{out}, {year(int(yr))}" if yr else out


def _valid(day: int) -> bool:
    return 1 <= day <= 31


# --- ordinals and plain numbers -----------------------------------------------------------------

_ORDINAL = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})*|\d+)(st|nd|rd|th)\b", re.I)
_GROUPED = re.compile(r"(?<![\w.,])([-−+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?(?![\d,]*\d)(?!\.\d)")
_PLAIN = re.compile(r"(?<![\w.,/:#@-])([-−]?)(\d+)(\.\d+)?(?![\w.]?\d)(?![A-Za-z])")
_VERSION = re.compile(r"\bv?\d+(?:\.\d+){2,}\b")
_FRACTIONS = {"1/2": "one half", "1/3": "one third", "2/3": "two thirds", "1/4": "one quarter",
              "3/4": "three quarters", "½": "one half", "¼": "one quarter", "¾": "three quarters"}
_FRACTION = re.compile(r"(?<![\w/])(1/2|1/3|2/3|1/4|3/4)(?![\w/])|[½¼¾]")
_SYMBOLS = (("&", " and "), ("+", " plus "), ("×", " times "), ("≈", " about "), ("=", " equals "),
            ("№", " number "))


def _ordinal(m: re.Match[str]) -> str:
    n = _int(m.group(1))
    suffix = m.group(2).lower()
    expected = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return ordinal(n) if suffix == expected else m.group(0)


def _plain(m: re.Match[str]) -> str:
    sign, whole, frac = m.groups()
    if len(whole) > 15 or (len(whole) > 4 and whole.startswith("0")):
        return digits(whole) + (f" point {digits(frac)}" if frac else "")
    return number(f"{'-' if sign else ''}{whole}{frac or ''}")


def _protect(text: str, pattern: re.Pattern[str], keep: list[str]) -> str:
    def stash(m: re.Match[str]) -> str:
        keep.append(m.group(0))
        return chr(_PUA + len(keep) - 1)
    return pattern.sub(stash, text)


#: Protected spans (version strings) wait in private-use characters while the rules run.
_PUA = 0xF0000
_PLACEHOLDER = re.compile("[\U000F0000-\U000FFFFD]")
_PHONE = re.compile(r"(?<![\w+])(?:\+?\d{1,3}[ .-])?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\d)")


def _phone(m: re.Match[str]) -> str:
    return ", ".join(digits(part) for part in re.split(r"[ .()-]+", m.group(0)) if part)


Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _rules() -> list[Rule]:
    def iso(m: re.Match[str]) -> str:
        return _date(int(m.group(2)), int(m.group(3)), m.group(1))

    def us(m: re.Match[str]) -> str:
        return _date(int(m.group(1)), int(m.group(2)), m.group(3))

    def month_day(m: re.Match[str]) -> str:
        day = int(m.group(2))
        if not _valid(day):
            return m.group(0)
        return _date(_MONTHS.index(_month(m.group(1))) + 1, day, m.group(3))

    def day_month(m: re.Match[str]) -> str:
        day = int(m.group(1))
        if not _valid(day):
            return m.group(0)
        out = f"the {ordinal(day)} of {_month(m.group(2))}"
        return f"{out}, {year(int(m.group(3)))}" if m.group(3) else out

    def ampm(m: re.Match[str]) -> str:
        return f"{cardinal(int(m.group(1)))} {m.group(2).lower()} m"

    def year_ctx(m: re.Match[str]) -> str:
        return f"{m.group(1)} {year(int(m.group(2)))}"

    def decade(m: re.Match[str]) -> str:
        tens = cardinal(int(m.group(2)) * 10) if m.group(2) != "0" else "hundred"
        head = cardinal(int(m.group(1)))
        word = tens[:-1] + "ies" if tens.endswith("y") else tens + "s"
        return f"{head} {word}" if m.group(1) != "20" else f"twenty {word}"

    def grouped(m: re.Match[str]) -> str:
        sign, whole, frac = m.groups()
        return number(f"{'-' if sign in '-−' and sign else ''}{whole}{frac or ''}") \
            if not sign or sign in "-−" else "plus " + number(f"{whole}{frac or ''}")

    def fraction(m: re.Match[str]) -> str:
        return _FRACTIONS[m.group(0)]

    return [
        (_PHONE, _phone),
        (_MONEY, _money),
        (_PERCENT, lambda m: f"{number(m.group(1))} percent"),
        (_ISO_DATE, iso),
        (_US_DATE, us),
        (_MONTH_DAY, month_day),
        (_DAY_MONTH, day_month),
        (_TIME, _time),
        (_AMPM, ampm),
        (_DECADE, decade),
        (_YEAR_CONTEXT, year_ctx),
        (_ORDINAL, _ordinal),
        (_FRACTION, fraction),
        (_UNIT_RE, _unit),
        (_GROUPED, grouped),
        (_PLAIN, _plain),
    ]


_RULES = _rules()
_HAS_DIGIT = re.compile(r"[\d½¼¾$€£¥₹%&+×≈№]")


def normalize_en(text: str) -> str:
    """``text`` with numbers, money, times, dates and units written as English words."""
    if not _HAS_DIGIT.search(text):
        return text
    keep: list[str] = []
    text = _protect(text, _VERSION, keep)
    for pattern, repl in _RULES:
        if pattern.pattern and _HAS_DIGIT.search(text):
            text = pattern.sub(repl, text)
    for symbol, word in _SYMBOLS:
        if symbol in text:
            text = re.sub(rf"\s*{re.escape(symbol)}\s*", word, text)
    text = re.sub(r"  +", " ", text)
    return _PLACEHOLDER.sub(lambda m: keep[ord(m.group(0)) - _PUA], text) if keep else text
