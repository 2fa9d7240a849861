"""Configuration objects shared by models and schedulers.

Every model and scheduler is built from the keys of a diffusers-style ``config.json`` /
``scheduler_config.json``. ``ConfigMixin`` records the arguments a class was constructed with as
``self.config`` (a read-only mapping with attribute access), builds instances back from such a mapping with
``from_config`` and writes it as JSON with ``save_config``. Keys the class does not know are ignored with a
single warning, so configs written by newer diffusers releases keep loading.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import MissingFileError
from .utils.files import atomic_write_text

__all__ = ["ConfigMixin", "FrozenConfig", "explicit_config", "load_json"]

# Keys that describe a file rather than an architecture: never passed to __init__, never warned about.
_META_KEYS = ("_class_name", "_diffusers_version", "_depth2img_version", "_name_or_path", "_use_default_values")
_WARNED: set[tuple[str, str]] = set()


class FrozenConfig(dict):
    """A read-only ``dict`` whose keys are also attributes (``config.scaling_factor``).

    ``_defaulted`` names the keys whose values came from the class's defaults rather than from the caller.
    """

    def __init__(self, values: Any = (), defaulted: Any = ()) -> None:
        super().__init__(values)
        object.__setattr__(self, "_defaulted", frozenset(defaulted))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("configs are read-only; build a new object with from_config(config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = _readonly  # type: ignore[assignment]
    pop = popitem = clear = update = setdefault = _readonly  # type: ignore[assignment]

    def __reduce__(self):  # keep pickling/deepcopy working despite the read-only methods
        return (FrozenConfig, (dict(self), self._defaulted))


def load_json(path: str | os.PathLike) -> dict:
    """Read a JSON object from ``path`` with an error that names the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


class ConfigMixin:
    """Records constructor arguments as ``self.config``; builds and saves objects from/to config JSON.

    Subclasses only write a normal ``__init__`` with keyword arguments named like the config keys; the
    wrapping done in ``__init_subclass__`` binds the call (defaults included) and stores it after
    ``__init__`` returns.
    """

    config_name = "config.json"
    config: FrozenConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original_init = cls.__init__
        signature = inspect.signature(original_init)

        @functools.wraps(original_init)
        def init_and_record(self, *args: Any, **kw: Any) -> None:
            original_init(self, *args, **kw)
            # Only the outermost (most derived) __init__ records, so subclasses see their own keys.
            if type(self).__init__ is not init_and_record:
                return
            bound = signature.bind(self, *args, **kw)
            given = set(bound.arguments)
            bound.apply_defaults()
            values = {
                name: value
                for name, value in bound.arguments.items()
                if name != "self" and signature.parameters[name].kind is not inspect.Parameter.VAR_KEYWORD
            }
            defaulted = [name for name in values if name not in given]
            object.__setattr__(self, "config", FrozenConfig(_json_ready(values), defaulted))

        cls.__init__ = init_and_record  # type: ignore[method-assign]

    @classmethod
    def compatible_config_keys(cls) -> frozenset[str]:
        """Keys of sibling classes that may share a config file with this one (see ``from_config``)."""
        return frozenset()

    @classmethod
    def extract_init_kwargs(cls, config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
        """Split ``config`` into the keys ``__init__`` accepts; warn once about keys no compatible class knows."""
        known = init_parameters(cls)
        siblings = cls.compatible_config_keys()
        kwargs = {}
        for key, value in config.items():
            if key in known:
                kwargs[key] = value
            elif not key.startswith("_") and key not in siblings and (cls.__name__, key) not in _WARNED:
                _WARNED.add((cls.__name__, key))
                warnings.warn(f"{cls.__name__}: ignoring unknown key {key!r} in {source}", UserWarning, stacklevel=3)
        return kwargs

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any):
        """Build an instance from a config mapping (e.g. another object's ``.config``) plus overrides.

        Keys this class does not take but a compatible class does (PNDM's config carries ``clip_sample`` for
        DDIM) are kept in the new object's ``.config`` without being used, as diffusers keeps them, so that
        ``DDIMScheduler.from_config(pipe.scheduler.config)`` still sees the checkpoint's ``clip_sample=False``.
        """
        merged = explicit_config(config)
        merged.update(overrides)
        kwargs = cls.extract_init_kwargs(merged)
        instance = cls(**kwargs)
        siblings = cls.compatible_config_keys()
        carried = {key: value for key, value in merged.items() if key not in kwargs and key in siblings}
        if carried:
            own = instance.config
            object.__setattr__(instance, "config", FrozenConfig({**own, **_json_ready(carried)}, own._defaulted))
        return instance

    def config_dict(self) -> dict[str, Any]:
        """The config as written to disk: class name and version first, then the constructor keys."""
        from . import __version__

        return {"_class_name": type(self).__name__, "_depth2img_version": __version__, **self.config}

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config_name`` (JSON) into ``save_directory``, atomically; returns the file's path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_name
        atomic_write_text(path, json.dumps(self.config_dict(), indent=2, sort_keys=False) + "\n")
        return path


def explicit_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` without the keys its object took from its class's defaults (diffusers' ``_use_default_values``).

    Those values are the source class's choices, not the checkpoint's, so another class built from the config
    uses its own defaults for them, as in diffusers: ``EulerDiscreteScheduler.from_config(pndm.config)`` spaces
    timesteps as Euler does, not as PNDM's default says.
    """
    if config is None:
        return {}
    skip = set(getattr(config, "_defaulted", ())) | set(config.get("_use_default_values", ()))
    return {key: value for key, value in config.items() if key not in skip}


def _json_ready(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples become lists and numpy/torch scalars plain numbers, so a config equals its JSON round trip."""
    out = {}
    for key, value in values.items():
        if isinstance(value, tuple):
            value = list(value)
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()
        out[key] = value
    return out
