"""Safe names: DNS-1123/1035 labels for Kubernetes objects and folders, label values, identifiers.

One rule each, so that a job, an endpoint, a schedule and a step name made from the same text
come out the same. A name that must be shortened keeps a hash of the whole, so two long names
never collide.
"""

from __future__ import annotations

import hashlib
import keyword
import re
import unicodedata

LABEL_MAX = 63


def ascii_text(text: str) -> str:
    """``text`` with accents dropped and other non-ASCII characters removed (``Café`` -> ``Cafe``)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def dns_slug(text: str, max_length: int = LABEL_MAX) -> str:
    """Lowercase letters and digits of ``text``, every other run of characters one ``-``, trimmed.

    At most ``max_length`` characters, starting and ending with a letter or digit; empty when
    nothing of ``text`` is usable. Cutting may merge two long names: use :func:`dns_label` where
    names must stay apart.
    """
    return re.sub("[^a-z0-9]+", "-", ascii_text(text).lower()).strip("-")[:max_length].strip("-")


def dns_label(text: str, max_length: int = LABEL_MAX, fallback: str = "x", letter_first: bool = False) -> str:
    """``text`` as an RFC 1123 label (a DNS-1035 label with ``letter_first``) that cannot collide.

    ``fallback`` stands in when nothing is usable; with ``letter_first`` a name starting with a
    digit gets ``fallback[0]-`` in front. A name that has to be shortened ends with a hash of
    the whole text, so two long names stay apart.
    """
    name = re.sub("[^a-z0-9]+", "-", ascii_text(text).lower()).strip("-") or fallback
    if letter_first and not name[0].isalpha():
        name = f"{fallback[0]}-{name}"
    if len(name) > max_length:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = f"{name[: max_length - 7].rstrip('-')}-{digest}"
    return name


def label_value(text: str) -> str:
    """Any text as a valid Kubernetes label value, still recognisable (``Training v2.ipynb`` -> ``Training-v2.ipynb``).

    Runs of characters other than letters, digits, ``-``, ``_`` and ``.`` become ``-``; the ends
    are trimmed to a letter or digit. Longer than 63: the first 54 and a hash of the whole.
    """
    value = re.sub("[^A-Za-z0-9_.-]+", "-", ascii_text(text)).strip("-_.")
    if len(value) <= LABEL_MAX:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[: LABEL_MAX - len(digest) - 1].rstrip('-_.')}-{digest}"


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be a Python variable (an identifier and not a keyword)."""
    return name.isidentifier() and not keyword.iskeyword(name)
