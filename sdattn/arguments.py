"""Argument checks shared by the library's constructors and functions.
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
