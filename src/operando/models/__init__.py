"""operando.models."""
