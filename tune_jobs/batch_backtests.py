"""Batch year backtests as Ray tasks: one task per (data range, strategy, parameters).

    umc-data import ../shared/data/binance-vision/spot/monthly/klines/BTCUSDT/1m/ --root market_data
    python tune_jobs/batch_backtests.py --preset demo          # real Jan-Jun 2024 + two synthetic years
    python tune_jobs/batch_backtests.py --dataset binance:2024 --strategy buy_and_hold --grid "sma:fast=20,50;slow=200"
    ray job submit --working-dir . -- python tune_jobs/batch_backtests.py --preset demo

``--help`` lists every flag; the job itself is ``umc_backtest.batch_cli``.
"""

import sys

from umc_backtest.batch_cli import main

if __name__ == "__main__":
    sys.exit(main())
