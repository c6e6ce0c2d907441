"""diffgen: train, sample and upscale images with diffusion models."""

__version__ = "0.1.0"
