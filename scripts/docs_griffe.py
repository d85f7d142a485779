"""A griffe extension for the documentation site (mkdocs.yml loads it): how docstrings read as pages.

keras_optx's docstrings are written for `help()` and doctest; three things read badly as Markdown:

- `Example:` (singular) is not griffe's examples section: renamed `Examples:` so `>>>` lines become code
  rather than Markdown block quotes.
- A formula written over several lines (each line an update, with ← or =) would run into one line:
  its lines get hard line breaks.
- A default that names a module constant (`epsilon=EPSILON`, `lr=_LR`) shows the constant's value.
"""

import re

import griffe

_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_FORMULA = re.compile(r"←|^\s*[^\s=`]{1,12} = ")


def _readable(text):
    lines = text.split("\n")
    out, paragraph = [], []

    def flush():
        if len(paragraph) > 1 and all(_FORMULA.search(line) for line in paragraph):
            out.extend(line.rstrip() + "  " for line in paragraph[:-1])
            out.append(paragraph[-1])
        else:
            out.extend(paragraph)
        paragraph.clear()

    in_sections = False
    for line in lines:
        if line.strip() == "Example:":
            line = line.replace("Example:", "Examples:")
        if _SECTION.match(line):
            in_sections = True
        if in_sections or not line.strip() or line.startswith((" ", ">>>")):
            flush()
            out.append(line)
            if not line.strip():
                in_sections = False
        else:
            paragraph.append(line)
    flush()
    return "\n".join(out)


def _constant(module, name):
    """The literal value of module-level `name` (followed through imports), or None."""
    try:
        member = module.get_member(name) if hasattr(module, "get_member") else module.members[name]
        while isinstance(member, griffe.Alias):
            member = member.final_target
        value = getattr(member, "value", None)
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if value is None:
        return None
    value = str(value)
    return value if re.fullmatch(r"[-+0-9.eE]+|True|False|None|'[^']*'|\"[^\"]*\"", value) else None


class ReadableDocstrings(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):
        self._visit(pkg, set())

    def _visit(self, obj, seen):
        if id(obj) in seen or isinstance(obj, griffe.Alias):
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = _readable(obj.docstring.value)
        if isinstance(obj, griffe.Function):
            for parameter in obj.parameters:
                default = parameter.default
                if default is not None and re.fullmatch(r"_?[A-Z][A-Z_0-9]*", str(default)):
                    value = _constant(obj.module, str(default))
                    if value is not None:
                        parameter.default = value
        for member in obj.members.values():
            self._visit(member, seen)
