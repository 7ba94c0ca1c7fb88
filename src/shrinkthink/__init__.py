"""shrinkthink: solve it any way first, then solve it the right way, then solve it in your head."""

__version__ = "0.1.0"
