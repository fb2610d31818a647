"""Small encoders trained from scratch: ``SmallCNN`` (grey images) and ``MelCNN`` (log-mel spectrograms)."""
