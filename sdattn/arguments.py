"""Argument checks shared by the library's constructors and functions: one style for all.
Errors name the argument and the received value, in the Keras wording."""

import numbers


def invalid_value(argument, expected, value):
    """The `ValueError` for a bad argument: "Received an invalid value for argument `x`, …"."""
    return ValueError(
        f"Received an invalid value for argument `{argument}`, expected {expected}. "
        f"Received: {argument}={value!r}")


def positive_int(argument, value, *, maximum=None, allow_none=False):
    """Returns `value` as an int, or raises naming the argument when it is not a positive integer.

    Args:
        argument: the argument's name, for the message.
        value: what was received; bools and non-integral numbers (1.5) are rejected.
        maximum: optional inclusive upper bound.
        allow_none: accept (and return) None.

    Returns:
        `int(value)`, or None when allowed and given.
    """
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0
            or (maximum is not None and value > maximum)):
        if maximum is not None:
            expected = f"an integer in [1, {maximum}]"
        else:
            expected = "a positive integer or `None`" if allow_none else "a positive integer"
        raise invalid_value(argument, expected, value)
    return int(value)


def integer(argument, value, *, minimum, allow_none=False):
    """Returns `value` as an int of at least `minimum`, else raises naming the argument.

    Args:
        argument: the argument's name, for the message.
        value: what was received; bools are rejected.
        minimum: the inclusive lower bound.
        allow_none: accept (and return) None.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise invalid_value(argument, f"an integer >= {minimum}" + (" or None" if allow_none else ""), value)
    return int(value)


def real(argument, value, *, low=None, high=None, high_inclusive=True, expected=None):
    """Returns `value` as a float in [low, high] (or [low, high)), else raises naming the argument.

    Args:
        argument: the argument's name, for the message.
        value: what was received; bools, non-numbers and NaN are rejected.
        low, high: inclusive lower bound and upper bound (None: unbounded).
        high_inclusive: whether `high` itself is allowed.
        expected: the message's description, e.g. "a float in [0, 1)"; derived when None.
    """
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and value == value
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        if expected is None:
            if high is None:
                expected = f"a number >= {low}" if low is not None else "a number"
            else:
                expected = f"a float in [{low}, {high}{']' if high_inclusive else ')'}"
        raise invalid_value(argument, expected, value)
    return float(value)


def choice(argument, value, choices):
    """Returns `value` when it is one of `choices`, else raises naming the argument."""
    if value not in choices:
        raise invalid_value(argument, f"one of {list(choices)}", value)
    return value


def boolean(argument, value):
    """Returns `value` when it is True or False, else raises naming the argument."""
    if not isinstance(value, bool):
        raise invalid_value(argument, "True or False", value)
    return value
