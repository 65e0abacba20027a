"""Stand-in for xformers in the audiocraft test tier (see ../README.md)."""
