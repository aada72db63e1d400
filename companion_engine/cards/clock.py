"""Dates and durations as SillyTavern writes them (moment.js 2.29, English locale).

``{{time}}`` is moment's ``LT``, ``{{date}}`` its ``LL``, ``{{datetimeformat ...}}``
takes any moment format string and ``{{idle_duration}}`` is ``duration.humanize()``.
The tests check this against vectors computed by moment itself.
"""

from __future__ import annotations

import datetime as dt
import math
import re

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
#: moment's English long date formats.
_LONG = {"LTS": "h:mm:ss A", "LT": "h:mm A", "L": "MM/DD/YYYY", "LL": "MMMM D, YYYY",
         "LLL": "MMMM D, YYYY h:mm A", "LLLL": "dddd, MMMM D, YYYY h:mm A",
         "l": "M/D/YYYY", "ll": "MMM D, YYYY", "lll": "MMM D, YYYY h:mm A",
         "llll": "ddd, MMM D, YYYY h:mm A"}
_LONG_RE = re.compile(r"(\[[^\[]*\])|(\\)?(LTS|LT|LL?L?L?|l{1,4})")
_TOKEN_RE = re.compile(
    r"(\[[^\[]*\])|(\\)?([Hh]mm(ss)?|Mo|MM?M?M?|Do|DDDo|DD?D?D?|ddd?d?|do?|w[o|w]?|W[o|W]?|Qo?"
    r"|N{1,5}|YYYYYY|YYYYY|YYYY|YY|y{2,4}|yo?|gg(ggg?)?|GG(GGG?)?|e|E|a|A|hh?|HH?|kk?|mm?|ss?"
    r"|S{1,9}|x|X|zz?|ZZ?|.)", re.S)


def ordinal(n: int) -> str:
    """moment's English ordinal: 1st, 2nd, 3rd, 4th, 11th, 21st."""
    b = n % 10
    if (n % 100) // 10 == 1:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(b, "th")
    return f"{n}{suffix}"


def _first_week_offset(year: int, dow: int, doy: int) -> int:
    fwd = 7 + dow - doy
    weekday = (dt.date(year, 1, fwd).isoweekday() % 7) if fwd >= 1 else \
        ((dt.date(year, 1, 1) + dt.timedelta(days=fwd - 1)).isoweekday() % 7)
    fwdlw = (7 + weekday - dow) % 7
    return -fwdlw + fwd - 1


def _days_in_year(year: int) -> int:
    return 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365


def _weeks_in_year(year: int, dow: int, doy: int) -> int:
    offset = _first_week_offset(year, dow, doy)
    following = _first_week_offset(year + 1, dow, doy)
    return (_days_in_year(year) - offset + following) // 7


def week_of_year(day: dt.date, dow: int, doy: int) -> tuple[int, int]:
    """moment's ``weekOfYear``: (week, week-year); dow/doy 0/6 = English, 1/4 = ISO."""
    offset = _first_week_offset(day.year, dow, doy)
    week = math.floor((day.timetuple().tm_yday - offset - 1) / 7) + 1
    if week < 1:
        return week + _weeks_in_year(day.year - 1, dow, doy), day.year - 1
    weeks = _weeks_in_year(day.year, dow, doy)
    if week > weeks:
        return week - weeks, day.year + 1
    return week, day.year


def _offset(moment: dt.datetime, sep: str) -> str:
    delta = moment.utcoffset() or dt.timedelta(0)
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{sep}{minutes % 60:02d}"


def _year(y: int, width: int) -> str:
    text = f"{abs(y):0{width}d}"
    return ("-" + text) if y < 0 else text


def _token(m: dt.datetime, tok: str) -> str | None:
    """One moment format token, or None when it is not one we write."""
    hour, dow = m.hour, m.isoweekday() % 7
    simple: dict[str, object] = {
        "M": m.month, "MM": f"{m.month:02d}", "MMM": _MONTHS[m.month - 1][:3],
        "MMMM": _MONTHS[m.month - 1], "Mo": ordinal(m.month),
        "Q": (m.month - 1) // 3 + 1, "Qo": ordinal((m.month - 1) // 3 + 1),
        "D": m.day, "DD": f"{m.day:02d}", "Do": ordinal(m.day),
        "DDD": m.timetuple().tm_yday, "DDDD": f"{m.timetuple().tm_yday:03d}",
        "DDDo": ordinal(m.timetuple().tm_yday),
        "d": dow, "do": ordinal(dow), "dd": _DAYS[dow][:2], "ddd": _DAYS[dow][:3],
        "dddd": _DAYS[dow], "e": dow, "E": m.isoweekday(),
        "YY": f"{m.year % 100:02d}", "YYYY": _year(m.year, 4),
        "YYYYY": _year(m.year, 5), "YYYYYY": ("+" if m.year >= 0 else "-") + f"{abs(m.year):06d}",
        "A": "AM" if hour < 12 else "PM", "a": "am" if hour < 12 else "pm",
        "H": hour, "HH": f"{hour:02d}", "h": hour % 12 or 12, "hh": f"{hour % 12 or 12:02d}",
        "k": hour or 24, "kk": f"{hour or 24:02d}",
        "m": m.minute, "mm": f"{m.minute:02d}", "s": m.second, "ss": f"{m.second:02d}",
        "X": str(math.floor(m.timestamp())), "x": str(math.floor(m.timestamp() * 1000)),
        "Z": _offset(m, ":"), "ZZ": _offset(m, ""),
        "Hmm": f"{hour}{m.minute:02d}", "Hmmss": f"{hour}{m.minute:02d}{m.second:02d}",
        "hmm": f"{hour % 12 or 12}{m.minute:02d}",
        "hmmss": f"{hour % 12 or 12}{m.minute:02d}{m.second:02d}",
    }
    if tok in simple:
        return str(simple[tok])
    if tok[0] in "wW" or tok[:2] in ("gg", "GG"):
        dow_, doy = (0, 6) if tok[0] in "wg" else (1, 4)
        week, year = week_of_year(m.date(), dow_, doy)
        if tok in ("w", "W"):
            return str(week)
        if tok in ("ww", "WW"):
            return f"{week:02d}"
        if tok in ("wo", "Wo"):
            return ordinal(week)
        return f"{year % 100:02d}" if len(tok) == 2 else _year(year, len(tok))
    if tok[0] == "S":
        frac = f"{m.microsecond:06d}000"
        return frac[:len(tok)]
    return None


def format_moment(moment: dt.datetime, fmt: str) -> str:
    """``moment(moment).format(fmt)`` in the English locale."""
    for _ in range(5):  # moment expands long formats up to 5 levels deep
        expanded = _LONG_RE.sub(lambda g: g.group(0) if g.group(1) or g.group(2)
                                else _LONG[g.group(3)], fmt)
        if expanded == fmt:
            break
        fmt = expanded
    out: list[str] = []
    for g in _TOKEN_RE.finditer(fmt):
        literal, escaped, tok = g.group(1), g.group(2), g.group(3)
        if literal:
            out.append(literal[1:-1])
        elif escaped:
            out.append(tok)
        else:
            value = _token(moment, tok)
            out.append(value if value is not None else tok)
    return "".join(out)


def humanize(seconds: float) -> str:
    """``moment.duration(seconds * 1000).humanize()``: "a few seconds", "5 minutes", ..."""
    ms = abs(seconds) * 1000
    days = ms / 864e5
    months = days * 4800 / 146097

    def rnd(x: float) -> int:  # JavaScript's Math.round
        return math.floor(x + 0.5)

    s, mi, h, d = rnd(ms / 1000), rnd(ms / 6e4), rnd(ms / 36e5), rnd(days)
    mo, y = rnd(months), rnd(months / 12)
    if s <= 44:
        return "a few seconds"
    if s < 45:
        return f"{s} seconds"
    if mi <= 1:
        return "a minute"
    if mi < 45:
        return f"{mi} minutes"
    if h <= 1:
        return "an hour"
    if h < 22:
        return f"{h} hours"
    if d <= 1:
        return "a day"
    if d < 26:
        return f"{d} days"
    if mo <= 1:
        return "a month"
    if mo < 11:
        return f"{mo} months"
    if y <= 1:
        return "a year"
    return f"{y} years"
