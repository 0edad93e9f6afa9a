"""redblue: adversarial machine learning as a game of red team (attacks) against blue team (defenses)."""

__version__ = "0.1.0"
