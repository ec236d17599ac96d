from .component import unlearn

__all__ = ["unlearn"]
