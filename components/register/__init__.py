from .component import register

__all__ = ["register"]
