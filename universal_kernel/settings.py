"""What a setting is, and how one declaration becomes a `RuntimeConfig` keyword and traitlets.

A `Setting` is declared once (the shared ones in config.py, a task's own in its module's `SETTINGS`):
its name, type, default, help and environment variable, and where it is set:
- `RUNTIME`: a keyword and attribute of `RuntimeConfig` (a kernel's runtime and the server's);
- `SERVER`: a trait of the server extension (`c.UniversalKernelApp.NAME`, `--UniversalKernelApp.NAME=`);
- `MAGICS`: a trait of the magics (`c.UniversalKernelMagics.NAME`).
The traits of a place are generated from its settings (`traits_base`); a setting set in both RUNTIME and
SERVER is handed from the server's trait to its runtime's config.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

RUNTIME, SERVER, MAGICS = "runtime", "server", "magics"

#: what an environment variable's parser returns to mean "as if unset": the declared default
UNSET = object()
_SAME = object()

#: the types a setting may have, and how its environment variable is read
_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": lambda raw: int(float(raw)),
    "float": float,
    "bool": lambda raw: raw.strip().lower() in ("1", "true", "yes", "on"),
    "path": Path,
    "paths": lambda raw: [Path(p) for p in raw.split(os.pathsep) if p] or UNSET,
    "names": lambda raw: [p for p in raw.split(os.pathsep) if p] or UNSET,
    "mapping": lambda raw: UNSET,  # no environment form
}


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # a key of _PARSERS
    #: a value, or a function of nothing called each time a default is needed (it may read the home folder)
    default: Any = None
    help: str = ""
    #: the environment variable that replaces the default wherever the setting is set
    env: str | None = None
    where: frozenset[str] = frozenset({RUNTIME})
    #: None is a value (a limit that is off)
    optional: bool = False
    #: the server's own default where it differs (it serves many clients at once)
    server_default: Any = _SAME
    #: the trait's name where it differs from the keyword (traitlets' Application owns `aliases`)
    trait: str | None = None
    choices: tuple | None = None
    minimum: float | None = None
    #: reads the environment variable instead of the type's parser (may return UNSET)
    parse: Callable[[str], Any] | None = None

    def __post_init__(self):
        object.__setattr__(self, "where", frozenset(self.where))
        if self.type not in _PARSERS:
            raise ValueError(f"setting {self.name!r}: unknown type {self.type!r}")

    @property
    def trait_name(self) -> str:
        return self.trait or self.name

    def value(self, place: str = RUNTIME) -> Any:
        """The default in `place`: the environment variable's value when it is set, else the declared default."""
        raw = os.environ.get(self.env) if self.env else None
        if raw is not None and (raw != "" or self.parse is not None):
            parsed = (self.parse or _PARSERS[self.type])(raw)
            if parsed is not UNSET:
                return parsed
        default = self.server_default if place == SERVER and self.server_default is not _SAME else self.default
        return default() if callable(default) else default

    def described(self) -> str:
        return f"{self.help} (environment: {self.env})" if self.env else self.help


def cache_folder(name: str) -> Callable[[], Path]:
    """The default of a folder setting: `~/.cache/universal-kernel/NAME`, HOME read when it is needed."""
    return lambda: Path.home() / ".cache" / "universal-kernel" / name


def by_name(settings: Iterable[Setting], place: str) -> dict[str, Setting]:
    """The settings set in `place`, by the name they have there (trait name or keyword)."""
    found: dict[str, Setting] = {}
    for setting in settings:
        if place not in setting.where:
            continue
        name = setting.trait_name if place != RUNTIME else setting.name
        if name in found and found[name] != setting:
            raise ValueError(f"two settings named {name!r} in {place}")
        found[name] = setting
    return found


def traits_base(settings: dict[str, Setting], place: str, class_name: str) -> type:
    """A HasTraits class with one configurable trait per setting, its default read when first used, for the
    configurable `class_name` to inherit (traitlets reads `c.<class_name>.<name>` for inherited traits too, and
    lists them in its help and config file). It bears that class's name: traitlets' messages name a trait's
    class (`--UniversalKernelApp.preload`); not being a Configurable, it is no config section of its own."""
    from traitlets import HasTraits, default, validate

    namespace: dict[str, Any] = {"__doc__": f"The {place} settings, generated from their declarations.",
                                 "__module__": __name__}
    for name, setting in settings.items():
        namespace[name] = _trait(setting, place).tag(config=True)
        namespace[f"_default_{name}"] = default(name)(lambda self, s=setting: s.value(place))
        if setting.type in ("names", "paths"):
            namespace[f"_validate_{name}"] = validate(name)(lambda self, proposal: _list_literals(proposal["value"]))
        if setting.minimum is not None:
            namespace[f"_validate_{name}"] = validate(name)(
                lambda self, proposal, s=setting: _at_least(s, proposal["value"]))
    base = type(class_name, (HasTraits,), namespace)
    base.__qualname__ = f"{class_name}.settings"
    return base


def _trait(setting: Setting, place: str):
    from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode

    help_text = setting.described()
    if setting.type == "mapping":
        return Dict(value_trait=Unicode(), help=help_text)
    if setting.type in ("names", "paths"):
        return List(Unicode(), allow_none=setting.optional, help=help_text)
    declared = setting.server_default if place == SERVER and setting.server_default is not _SAME else setting.default
    # the declared default, for the help and config files (the one used is read when needed: `value`)
    shown = {} if callable(declared) or (declared is None and not setting.optional) else {"default_value": declared}
    if setting.choices:
        return Enum(setting.choices, allow_none=setting.optional, help=help_text, **shown)
    kind = {"str": Unicode, "path": Unicode, "int": Integer, "float": Float, "bool": Bool}[setting.type]
    return kind(allow_none=setting.optional, help=help_text, **shown)


def from_trait(setting: Setting, value: Any) -> Any:
    """A trait's value as the runtime's config takes it (traits hold strings where the config holds paths)."""
    if value is None:
        return None
    if setting.type == "path":
        return Path(value).expanduser()
    if setting.type == "paths":
        return [Path(v).expanduser() for v in value]
    if setting.type in ("names", "mapping"):
        return type(value)(value)
    return value


def _list_literals(values: list) -> list:
    """Accept `--UniversalKernelApp.preload='["a", "b"]'` as well as the option given once per item."""
    items = []
    for item in values:
        text = item.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                items.extend(str(one) for one in ast.literal_eval(text))
                continue
            except (ValueError, SyntaxError):
                pass
        items.append(item)
    return items


def _at_least(setting: Setting, value):
    if value is not None and value < setting.minimum:
        from traitlets import TraitError

        raise TraitError(f"{setting.name} must be at least {setting.minimum:g}")
    return value
