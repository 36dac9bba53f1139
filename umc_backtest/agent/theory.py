"""The prototype's predictions, checked against a run's measured values (never tuned to pass)."""

from __future__ import annotations

import math

#: (name, metric key in the batch table, test, the prediction as text)
CHECKS = (
    ("max drawdown < 15%", "max_drawdown", lambda v: v < 0.15, "< 0.15"),
    ("lambda within [0.1, 0.46]", None, None, "[0.1, 0.46]"),
    ("Sharpe in 1.5-2.5", "sharpe", lambda v: 1.5 <= v <= 2.5, "[1.5, 2.5]"),
    ("leakage < 0.01", "umc_leakage", lambda v: v < 0.01, "< 0.01"),
    (">= 4 regimes", "umc_regimes_seen", lambda v: v >= 4, ">= 4"),
)


def theory_check(row: dict) -> list[dict]:
    """One row per prediction: the measured value, the predicted range, pass or fail."""
    out = []
    for name, key, test, text in CHECKS:
        if key is None:  # lambda: its whole history must stay in range
            lo, hi = row.get("umc_lambda_min", math.nan), row.get("umc_lambda_max", math.nan)
            ok = lo >= 0.1 - 1e-12 and hi <= 0.46 + 1e-12
            measured = f"[{lo:.3f}, {hi:.3f}]"
        else:
            value = row.get(key, math.nan)
            ok = bool(value == value and test(value))
            measured = f"{value:.4g}"
        out.append({"check": name, "predicted": text, "measured": measured, "result": "pass" if ok else "FAIL"})
    return out
