import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import calc  # noqa: E402


def test_add() -> None:
    assert calc.add(2, 3) == 5


def test_power() -> None:
    assert calc.power(2, 10) == 1024
