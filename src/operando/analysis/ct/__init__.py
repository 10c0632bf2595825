"""Analysis of operando CT time series: rigid registration, and what follows it."""
