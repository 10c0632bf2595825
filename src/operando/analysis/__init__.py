"""operando.analysis."""
