"""batchgen: bulk image generation on fal.ai's queue API."""

__version__ = "0.1.0"
