"""operando.synth."""
