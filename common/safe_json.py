"""JSON text from an untrusted file, parsed with bounds: size, nesting depth, finite numbers.

``loads(text, what)`` is ``json.loads`` that never raises anything but ``ValueError`` with a
one-line message: no ``RecursionError`` on deeply nested input (the depth is checked on the raw
text before the parser sees it), no ``inf``/``NaN`` (``Infinity``, ``NaN`` and numbers that
overflow a float are refused), no huge integers (Python 3.10 parses a 100,000-digit integer in
quadratic time), and no text above ``max_bytes``.
"""
import json
import math

MAX_DEPTH = 32
MAX_BYTES = 16 << 20
MAX_INT_DIGITS = 30


def _depth(text):
    """The deepest nesting of ``[``/``{`` in ``text``, strings skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name):
    raise ValueError("a non-finite number (%s)" % name)


def _float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a float (%s...)" % text[:20])
    return value


def _int(text):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("an integer of %d digits" % len(text))
    return int(text)


def loads(text, what="the JSON text", max_depth=MAX_DEPTH, max_bytes=MAX_BYTES):
    """Parse untrusted JSON ``text`` (str or bytes); ``ValueError`` (one line naming ``what``)
    for anything malformed, too deep, too large or non-finite."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise ValueError("%s is %d bytes, more than %d" % (what, len(text), max_bytes))
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("%s is not UTF-8" % what) from None
    if not isinstance(text, str):
        raise ValueError("%s is not text" % what)
    if len(text) > max_bytes:
        raise ValueError("%s is %d characters, more than %d" % (what, len(text), max_bytes))
    if _depth(text) > max_depth:
        raise ValueError("%s nests deeper than %d levels" % (what, max_depth))
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_float,
                          parse_int=_int)
    except RecursionError:  # cannot happen after the depth check; kept as a last guard
        raise ValueError("%s nests too deeply" % what) from None
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else "malformed"
        raise ValueError("%s is not valid JSON (%s)" % (what, first[:120])) from None
