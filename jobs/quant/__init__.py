"""An offline quant research pipeline: synthetic prices, SQL clean, features, ridge fit, backtest, report."""
