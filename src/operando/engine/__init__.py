"""operando.engine."""
