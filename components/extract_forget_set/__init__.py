from .component import extract_forget_set

__all__ = ["extract_forget_set"]
