"""EntryGuard: just-in-time, time-bounded network access."""

__version__ = "0.1.0"
