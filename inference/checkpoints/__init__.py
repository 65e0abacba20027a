"""Checkpoints: loading and the model cache, audiocraft conversion, folder layouts, random-weight test models."""
