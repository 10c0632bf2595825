"""operando: out-of-core engine for operando X-ray imaging of batteries."""

__version__ = "0.1.0"
