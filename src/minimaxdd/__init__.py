"""minimaxdd: dataset distillation with diffusion models, and the protocol that measures it."""

__version__ = "0.1.0"
