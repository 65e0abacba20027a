"""Audio the bot edits itself, without torch: continuation stitching, MP3 fitting, clip checks and waveform pictures."""
