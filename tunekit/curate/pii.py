"""Personal data and secrets in text, replaced by typed placeholders.

Each kind has one pattern; a match is replaced by ``[EMAIL]``, ``[PHONE]``, ``[IP_ADDRESS]``, ``[CREDIT_CARD]`` or
``[SECRET]`` and counted. The patterns lean towards precision on training text full of numbers (GSM8K's sums must
survive): a phone number needs separators or a leading ``+``, a card number must pass the Luhn checksum, an IPv4
address needs four octets of at most 255, and a secret is either a token with a well-known prefix (``sk-``,
``ghp_``, ``AKIA``, ``hf_``, ``xoxb-``, ``AIza``...) or a long opaque value assigned to a key named like one
(``api_key = ...``, ``"token": "..."``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "ip_address": "[IP_ADDRESS]",
    "credit_card": "[CREDIT_CARD]",
    "secret": "[SECRET]",
}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# +CC then groups, or (NNN) NNN-NNNN / NNN-NNN-NNNN / NNN.NNN.NNNN: separators are required, so that plain numbers in
# arithmetic (5551234567) are left alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])")
# 13 to 19 digits in one run, or in the groups cards are printed in (4-4-4-4 up to 4-4-4-7, Amex's 4-6-5), split by
# a space or a dash; checked with Luhn before it is replaced. Sums like 14000-3920-1000 have other groups.
_CARD = re.compile(r"(?<![\w-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5})(?![\w-])")
_PREFIXED_SECRET = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|glpat-[A-Za-z0-9_-]{20,})"
)
# key = value, key: value, "key": "value" where the key is named like a credential; only the value is replaced.
_ASSIGNED_SECRET = re.compile(
    r"(?i)((?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)[\"']?\s*[:=]\s*"
    r"[\"']?)([A-Za-z0-9_\-/+=.]{16,})"
)


def luhn_valid(digits: str) -> bool:
    """Whether the digit string passes the Luhn checksum that payment card numbers carry."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group(0))
    return PLACEHOLDERS["credit_card"] if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _phone(match: re.Match[str]) -> str | None:
    # E.164 numbers have up to 15 digits, and real ones at least 9 with the country code: "+25.13-10" is a sum.
    digits = re.sub(r"\D", "", match.group(0))
    return PLACEHOLDERS["phone"] if 9 <= len(digits) <= 15 else None


def _assigned(match: re.Match[str]) -> str | None:
    value = match.group(2)
    # An opaque value mixes letters and digits; a plain word ("password: correcthorsebattery") is left alone.
    if not (re.search(r"\d", value) and re.search(r"[A-Za-z]", value)):
        return None
    return match.group(1) + PLACEHOLDERS["secret"]


# Kind -> (pattern, replacement for a match or None to leave it), applied in this order: secrets and cards before
# phones, whose digit groups they contain.
_RULES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str | None]]] = [
    ("secret", _PREFIXED_SECRET, lambda m: PLACEHOLDERS["secret"]),
    ("secret", _ASSIGNED_SECRET, _assigned),
    ("email", _EMAIL, lambda m: PLACEHOLDERS["email"]),
    ("credit_card", _CARD, _card),
    ("ip_address", _IPV4, lambda m: PLACEHOLDERS["ip_address"]),
    ("phone", _PHONE, _phone),
]


def scrub_text(text: str, kinds: set[str], counts: dict[str, int]) -> str:
    """``text`` with every match of ``kinds`` replaced by its placeholder; ``counts[kind]`` grows by the matches."""
    for kind, pattern, replace in _RULES:
        if kind not in kinds:
            continue

        def sub(match: re.Match[str], kind: str = kind, replace: Callable = replace) -> str:
            new = replace(match)
            if new is None:
                return match.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return new

        text = pattern.sub(sub, text)
    return text


def scrub_value(value: Any, kinds: set[str], counts: dict[str, int]) -> Any:
    """Every string inside ``value`` (a row, its messages, lists) scrubbed; keys and other values as they are."""
    if isinstance(value, str):
        return scrub_text(value, kinds, counts)
    if isinstance(value, dict):
        return {key: scrub_value(item, kinds, counts) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_value(item, kinds, counts) for item in value]
    return value
