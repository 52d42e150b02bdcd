"""How date text and date numbers are written, read apart from the values' parsing (``convfm.data.readers``):
what a number that is no epoch second looks like, and (``day_first_evidence``) whether numeric dates are
day-first (02/01/2025 as 2 January) or month-first.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

_EXCEL_SERIALS = (20_000, 80_000)  # 1954-10-03 to 2119-01-11 as days after Excel's day 0, 1899-12-30
_EXCEL_DAY_0 = pd.Timestamp("1899-12-30")


def number_date_guess(value: float) -> Optional[str]:
    """What a date column's number below epoch seconds' range looks like: ``"a YYYYMMDD date (2024-03-02)"``,
    ``"an Excel serial day count (2024-03-02)"``, or None."""
    if value == int(value) and 10_000_000 <= value <= 99_999_999:
        digits = str(int(value))
        try:
            return f"a YYYYMMDD date ({pd.Timestamp(f'{digits[:4]}-{digits[4:6]}-{digits[6:]}').date()})"
        except ValueError:
            pass
    if _EXCEL_SERIALS[0] <= value <= _EXCEL_SERIALS[1]:
        return f"an Excel serial day count ({(_EXCEL_DAY_0 + pd.Timedelta(days=float(value))).date()})"
    return None
