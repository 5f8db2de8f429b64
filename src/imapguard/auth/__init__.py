"""Who are you: factors and the one authentication chokepoint."""
