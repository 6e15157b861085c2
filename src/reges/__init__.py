"""reges: ReGeS (Reciprocal Retrieval-Generation Synergy) for conversational recommendation."""

__version__ = "0.1.0"
