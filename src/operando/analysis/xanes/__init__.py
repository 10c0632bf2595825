"""XANES analysis: per-particle registration and per-pixel spectra."""
