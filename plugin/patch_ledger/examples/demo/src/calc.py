def add(a: float, b: float) -> float:
    return a + b


def power(base: float, exponent: int) -> float:
    return base**exponent
