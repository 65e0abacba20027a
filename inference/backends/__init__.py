"""Where the engine runs: the back-end base class and factory, local worker processes, and Ray."""
