"""Neural system identification of visual cortex in PyTorch: data, models, training, measures.

This package never imports a database layer; ``schemas`` builds on it.
"""

__version__ = "0.1.0"
