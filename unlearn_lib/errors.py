"""User-facing errors: one clear line, never a traceback at the command line."""


class UnlearnError(Exception):
    """Base class for errors caused by the user's input or environment.

    The CLI prints ``str(err)`` on one line and exits non-zero; library callers catch
    the subclass they care about.
    """


class DatasetError(UnlearnError):
    """A dataset folder or manifest is malformed, or a file does not match it."""


class SelectionError(UnlearnError):
    """A forget-set selection names unknown records or selects nothing."""


class ModelError(UnlearnError):
    """A model folder is missing, incomplete or incompatible with the request."""


class ConfigError(UnlearnError):
    """A hyper-parameter or option is invalid."""


class StopNotLanded(ConfigError):
    """The calibrated stop could not land within the step budget with these options.

    Deterministic for a given model, data and options: a retry reaches the same verdict, so the
    compliance pipeline fails the run permanently (it is a ``ConfigError``).
    """
