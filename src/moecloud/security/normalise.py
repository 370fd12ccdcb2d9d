"""One normal form for screening: no zero-width or bidi-control characters, NFKC (full-width and mathematical
letters become ASCII) and Cyrillic/Greek look-alikes mapped to the Latin letters they imitate."""

from __future__ import annotations

import re
import unicodedata

INVISIBLE = ("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"  # zero-width, soft hyphen
             "\u200e\u200f\u202a\u202b\u202c\u202d\u202e")  # bidi controls
LOOK_ALIKES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X",
    "І": "I", "Ј": "J", "Ѕ": "S",
    # Greek
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
}
TABLE = {ord(character): None for character in INVISIBLE} | {ord(key): value for key, value in LOOK_ALIKES.items()}
_LOOK_ALIKE_CLASS = "[" + "".join(LOOK_ALIKES) + "]"
# what only an obfuscated text contains: an invisible character inside a word, a look-alike letter touching a
# Latin one, a run of full-width or mathematical letters
ZERO_WIDTH_IN_WORD = re.compile(r"(?<=[^\W\d_])[" + INVISIBLE + r"]+(?=[^\W\d_])")
MIXED_SCRIPT = re.compile(r"[A-Za-z]" + _LOOK_ALIKE_CLASS + "|" + _LOOK_ALIKE_CLASS + "[A-Za-z]")
WIDE_LETTERS = re.compile(r"[\uff21-\uff3a\uff41-\uff5a]{2,}|[\U0001d400-\U0001d7ff]{2,}")


def normalise(text: str) -> str:
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text.translate(TABLE))
