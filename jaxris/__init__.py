"""jaxris: text-prompted Segment Anything (referring image segmentation) in JAX/Flax."""

__version__ = "0.1.0"
