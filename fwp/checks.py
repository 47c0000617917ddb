"""The value checks every config and entry point shares: each raises a ValueError naming the
field, the bad value and what is valid, before anything is traced."""

from __future__ import annotations


def positive_int(field: str, value, hint: str = "") -> None:
  """`value` must be an int >= 1 (not a bool): "<field> must be a positive integer<hint>, got v."."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{field} must be a positive integer{hint}, got {value!r}.")


def finite_non_negative(field: str, value) -> None:
  """`value` must be a finite number >= 0 (NaN fails): "<field> must be a finite number >= 0,
  got v."."""
  if not 0 <= value < float("inf"):
    raise ValueError(f"{field} must be a finite number >= 0, got {value!r}.")


def choice(field: str, value, choices) -> None:
  """`value` must be one of `choices`: "Unknown <field> v; valid choices: a, b."."""
  if value not in choices:
    raise ValueError(f"Unknown {field} {value!r}; valid choices: {', '.join(choices)}.")


def at_least(field: str, value, minimum: int) -> None:
  """`value` must be an int >= minimum (not a bool): "<field> must be an integer >= m, got v."."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}.")
