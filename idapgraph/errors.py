"""Error types. :class:`InputError` is the user's fault (exit code 2 in the CLI); anything else
that escapes is an internal error (exit code 1)."""


class IdapgraphError(Exception):
    """Base class of idapgraph's own errors."""


class InputError(IdapgraphError):
    """Bad input: unreadable model, bad target, bad plan, unsafe path. One clear line."""


class UntraceableError(InputError):
    """A torch module that neither torch.fx nor torch.export traces as a whole (``compress``
    then tries its parts)."""


class EmitError(IdapgraphError):
    """The rewritten model failed validation; nothing was written."""
