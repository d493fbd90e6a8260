"""frankenmoe: recipe → merged Mixtral-style MoE → 4-bit AWQ → verified, carded, pushed."""

__version__ = "0.1.0"
