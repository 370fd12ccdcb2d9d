"""Personal information, validated: a digit run is PII only when it passes the checks its kind carries.

Mainland resident ID numbers (GB 11643: province code, a real birth date, the ISO 7064 MOD 11-2 check digit),
mainland mobiles (the number plan's 1[3-9]x segments, optional +86), bank cards (Luhn and a card scheme's prefix
and length: UnionPay 62 included), emails, passports (the mainland's E/G formats alone; other formats only
next to a word such as "passport" or 护照) and international numbers (+ and a country code, 8-15 digits). A run
of digits right after a word like 订单号 / "order" is an order number, not a card or a phone. Every quantifier is
bounded, so a megabyte of digits or letters costs linear time. No match starts right after a ``]`` or ends right
before a ``[``: a redaction placeholder (``[PHONE]``) never turns its neighbours into a match they were not.
"""

from __future__ import annotations

import re
from datetime import date

from moecloud.security.findings import Finding

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
PROVINCES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51,
                       52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83})
# mainland mobile segments: the third digit each second digit allows (MIIT number plan, incl. data-only 14x)
MOBILE_SEGMENTS = {"3": "0123456789", "4": "56789", "5": "012356789", "6": "2567", "7": "012345678",
                   "8": "0123456789", "9": "0123456789"}
# calling codes of one to three digits (ITU E.164), enough to tell "+44 20 ..." from "+0 12 ..."
COUNTRY_CODES = frozenset({
    "1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81",
    "82", "84", "86", "90", "91", "92", "93", "94", "95", "98", "212", "213", "216", "218", "220", "221", "233",
    "234", "254", "255", "256", "260", "263", "351", "352", "353", "354", "355", "356", "357", "358", "359",
    "370", "371", "372", "373", "374", "375", "380", "381", "385", "386", "420", "421", "852", "853", "855",
    "856", "880", "886", "960", "961", "962", "963", "964", "965", "966", "967", "968", "970", "971", "972",
    "973", "974", "975", "976", "977", "992", "993", "994", "995", "996", "998",
})

CN_ID = re.compile(r"(?<![0-9A-Za-z\]])\d{6} ?\d{8} ?\d{3}[\dXx](?![0-9A-Za-z\[])", re.ASCII)  # spaced as on forms
MOBILE = re.compile(r"(?<![\d+\]])(?:(?:\+|00)86[ -]?)?(1[3-9]\d(?:[ -]?\d{4}){2})(?![\d\[])", re.ASCII)
CARD = re.compile(r"(?<![\d.\]-])\d(?:[ -]?\d){12,18}(?![\d\[])", re.ASCII)
EMAIL = re.compile(r"(?<![\w.%+\]-])[\w.%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
                   r"\.[A-Za-z]{2,24}\b(?!\[)",
                   re.ASCII)
INTL_PHONE = re.compile(r"(?<![\w+\]])\+(\d{1,3})(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\d\[])", re.ASCII)
CN_PASSPORT = re.compile(r"(?<![A-Za-z0-9\]])(?:[EG]\d{8}|E[A-HJ-NP-Z]\d{7})(?![A-Za-z0-9\[])")
PASSPORT_WORD = re.compile(r"passport|pasaporte|passeport|reisepass|护照|護照|旅券", re.IGNORECASE)
ANY_PASSPORT = re.compile(r"(?<![A-Za-z0-9\]])[A-Z]{0,2}\d{6,9}(?![A-Za-z0-9\[])", re.ASCII)
ORDER_WORD = re.compile(r"(?:订单|单号|运单|物流|流水号|工单|序列号|批号|order|tracking|invoice|serial|sku|ticket)"
                        r"[^\d\n]{0,8}$", re.IGNORECASE)
DIGIT = re.compile(r"[0-9]")
SEPARATORS = str.maketrans("", "", " -.()")


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits."""
    return ID_CHECK[sum(int(digit) * weight for digit, weight in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def id_shaped(number: str) -> bool:
    """18 characters with a province code and a real birth date: a resident ID number, its check digit aside."""
    if len(number) != 18 or not number[:17].isdigit() or int(number[:2]) not in PROVINCES:
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return date(1900, 1, 1) <= born <= date.today()


def valid_cn_id(number: str) -> bool:
    return id_shaped(number) and id_check_digit(number[:17]) == number[17].upper()


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass Luhn."""
    total = 0
    for position, digit in enumerate(reversed(partial)):
        value = int(digit) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str(-total % 10)


def valid_luhn(number: str) -> bool:
    return len(number) > 1 and luhn_check_digit(number[:-1]) == number[-1]


def card_scheme(number: str) -> str | None:
    """The scheme whose prefix and length the number has (None: no scheme issues it)."""
    length, prefix2, prefix4 = len(number), int(number[:2]), int(number[:4])
    if number[0] == "4" and length in (13, 16, 19):
        return "visa"
    if (51 <= prefix2 <= 55 or 2221 <= prefix4 <= 2720) and length == 16:
        return "mastercard"
    if prefix2 in (34, 37) and length == 15:
        return "amex"
    if prefix2 == 62 and 16 <= length <= 19:
        return "unionpay"
    if 3528 <= prefix4 <= 3589 and 16 <= length <= 19:
        return "jcb"
    if (prefix4 == 6011 or 644 <= int(number[:3]) <= 649 or prefix2 == 65) and 16 <= length <= 19:
        return "discover"
    if (prefix2 == 36 or 300 <= int(number[:3]) <= 305) and length == 14:
        return "diners"
    return None


def valid_card(number: str) -> bool:
    """Luhn and a scheme; an ID-shaped run (a mistyped ID number) is not a card however its digits add up."""
    return (13 <= len(number) <= 19 and number.isdigit() and card_scheme(number) is not None and valid_luhn(number)
            and not id_shaped(number))


def valid_mobile(number: str) -> bool:
    digits = number.translate(SEPARATORS)
    return len(digits) == 11 and digits[0] == "1" and digits[2] in MOBILE_SEGMENTS.get(digits[1], "")


def valid_intl_phone(number: str) -> bool:
    digits = number.translate(SEPARATORS).lstrip("+")
    return 8 <= len(digits) <= 15 and any(digits[:size] in COUNTRY_CODES for size in (1, 2, 3))


class PiiDetector:
    """Finds validated PII; each finding's ``kind`` is the placeholder's name."""

    name = "pii"

    def detect(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []

        def add(start: int, end: int, kind: str, reason: str) -> None:
            if any(start < other_end and other_start < end for other_start, other_end in taken):
                return
            taken.append((start, end))
            found.append(Finding(self.name, "pii", 1.0, reason, (start, end), kind))

        if _has_digits(text):
            for match in CN_ID.finditer(text):
                if valid_cn_id(match.group().replace(" ", "")):
                    add(*match.span(), "CN_ID", "resident ID number (check digit and birth date valid)")
            for match in CARD.finditer(text):
                digits = match.group().translate(SEPARATORS)
                if valid_card(digits) and not _after_order_word(text, match.start()):
                    add(*match.span(), "BANK_CARD", f"{card_scheme(digits)} card number (Luhn valid)")
            for match in MOBILE.finditer(text):
                if valid_mobile(match.group(1)) and not _after_order_word(text, match.start()):
                    add(*match.span(), "PHONE", "mainland mobile number")
            if "+" in text:
                for match in INTL_PHONE.finditer(text):
                    if valid_intl_phone(match.group()) and not _after_order_word(text, match.start()):
                        add(*match.span(), "PHONE", "international phone number")
            for match in CN_PASSPORT.finditer(text):
                add(*match.span(), "PASSPORT", "mainland passport number")
            for word in PASSPORT_WORD.finditer(text):
                window_start = word.end()
                window = text[window_start:window_start + 40]
                for match in ANY_PASSPORT.finditer(window):
                    add(window_start + match.start(), window_start + match.end(), "PASSPORT",
                        f"passport number after {word.group()!r}")
        if "@" in text:
            for match in EMAIL.finditer(text):
                add(*match.span(), "EMAIL", "email address")
        return found


def _has_digits(text: str) -> bool:
    return DIGIT.search(text) is not None


def _after_order_word(text: str, start: int) -> bool:
    return ORDER_WORD.search(text, max(0, start - 24), start) is not None
