"""MusicGen itself: the engine, its decoding loop and decoder step, melody chroma, stems and audio post-processing (imports torch)."""
