"""The close-match hint that every family's ``check_env_id`` and ``envs.env_family`` give for an unknown id.

One place, so that a typo reads the same in every family: the five closest known ids, or
when none is close, how many there are and one example.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def close_matches(env_id: str, known: Sequence[str]) -> list[str]:
    """The known ids closest to ``env_id``, best first (at most five, similarity >= 0.5).

    :param env_id: the id that was asked for
    :param known: the ids it should have been one of
    """
    return difflib.get_close_matches(env_id, known, n=5, cutoff=0.5)


def close_match_hint(env_id: str, known: Sequence[str], noun: str = "ids are registered") -> str:
    """``"close matches: a, b"``, or when none is close ``"<count> <noun>, e.g. <first>"``.

    :param env_id: the id that was asked for
    :param known: the family's ids (sorted: the example is the first)
    :param noun: what the count counts, e.g. ``"ids are supported"``
    """
    close = close_matches(env_id, known)
    if close:
        return f"close matches: {', '.join(close)}"
    if not known:
        return "none is known"
    return f"{len(known)} {noun}, e.g. {known[0]}"


def check_known_id(env_id: str, known: Sequence[str], what: str, noun: str = "ids are registered") -> None:
    """Raise ``ValueError("env_id='<id>' is not <what>; <hint>")`` unless ``env_id`` is in ``known``.

    :param env_id: the id that was asked for
    :param known: the family's ids, sorted
    :param what: what a known id is, e.g. ``"a registered MiniGrid environment"``
    :param noun: see :func:`close_match_hint`
    """
    if env_id not in known:
        raise ValueError(f"env_id={env_id!r} is not {what}; {close_match_hint(env_id, known, noun)}")


__all__ = ["check_known_id", "close_match_hint", "close_matches"]
