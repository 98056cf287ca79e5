"""polyalign: adapt and align language models to new languages and cultures, measured honestly."""

__version__ = "0.1.0"
