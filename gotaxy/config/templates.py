# -*- test-case-name: tests.test_config_files -*-
"""
frp's templates in configuration files: ``{{ .Envs.NAME }}``.

frp renders every configuration file as a Go ``text/template`` before it
parses the TOML, with the process's environment as ``.Envs``, so that

    serverAddr = "{{ .Envs.FRP_SERVER_ADDR }}"
    serverPort = {{ .Envs.FRP_SERVER_PORT }}

takes its values from the environment.  Gotaxy renders the same form (with
Go's ``{{-`` and ``-}}`` trim markers) the same way: the variable's value is
put in as written, not quoted; a variable that is not set becomes the empty
string, as in frp, and costs a warning naming it.  Any other template action
(``{{ if }}``, ``{{ range }}``, frp's helper functions) is refused with the
line it is on, rather than being left in the file for the TOML reader to
trip over.
"""

from __future__ import annotations

import re
from typing import Mapping

import attrs

#: ``{{ .Envs.NAME }}``, ``{{- .Envs.NAME -}}``.
_ENV = re.compile(r"(\s*)\{\{(-?)\s*\.Envs\.([A-Za-z_][A-Za-z0-9_]*)\s*(-?)\}\}(\s*)")
_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template action Gotaxy does not render; str() names the line and the fix."""


@attrs.frozen
class Rendered:
    text: str
    #: Names of the variables the file uses that are not set.
    unset: tuple[str, ...]
    #: Whether the file had any template at all.
    templated: bool


def render(text: str, env: Mapping[str, str]) -> Rendered:
    """``text`` with every ``{{ .Envs.NAME }}`` replaced by ``env[NAME]`` ("" when unset)."""
    if "{{" not in text:
        return Rendered(text, (), False)
    unset: list[str] = []

    def put(match: re.Match[str]) -> str:
        before, trim_left, name, trim_right, after = match.groups()
        if name not in env and name not in unset:
            unset.append(name)
        value = env.get(name, "")
        return ("" if trim_left else before) + value + ("" if trim_right else after)

    rendered = _ENV.sub(put, text)
    left = _ACTION.search(rendered)
    if left is not None:
        line = rendered.count("\n", 0, left.start()) + 1
        action = left.group(0)
        shown = action if len(action) <= 40 else action[:37] + "..."
        raise TemplateError(
            f"line {line}: the template {shown} is not one Gotaxy renders; only "
            f"{{{{ .Envs.NAME }}}} (an environment variable) is, so write the value there instead"
        )
    return Rendered(rendered, tuple(unset), True)
