"""Two small helpers about an optimizer's variables, shared by `_base` and the modules `_base` imports
(`_rounding`), so that none of those imports `_base` back."""


def _track_once(optimizer, variable):
    """Track a variable unless already tracked (Keras also tracks Variables set as attributes)."""
    if not any(v is variable for v in optimizer._variables):
        optimizer._track_variable(variable)


def _variable_path(variable):
    return getattr(variable, "path", variable.name).replace("/", "_").replace(":", "_")
