"""codegpt's data side and stage entry points.

Each stage is `python -m pipeline <stage> [--config FILE] [key=value ...]`.
"""
