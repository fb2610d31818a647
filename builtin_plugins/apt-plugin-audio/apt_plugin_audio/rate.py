"""The rate Whisper's features are made at; in a module of its own so that the package, the loader and the
encoder all import it without importing each other."""

SAMPLING_RATE = 16_000
