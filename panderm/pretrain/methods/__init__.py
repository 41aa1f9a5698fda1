"""Pretraining methods: each owns its heads (and teacher) and turns a student + batch into a loss.

See `panderm.pretrain.methods.base` for the calling protocol; build methods from configs with
`build_method`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from panderm.errors import ConfigError
from panderm.models.encoder import Encoder
from panderm.models.teachers import OpenClipTeacher
from panderm.pretrain.methods.base import Method
from panderm.pretrain.methods.masked import Mae, MlmClip, MlmEma
from panderm.pretrain.methods.multiview import Dino, Ibot, SimClr

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (MlmClip, MlmEma, Mae, Dino, Ibot, SimClr)}

__all__ = ["METHODS", "Dino", "Ibot", "Mae", "Method", "MlmClip", "MlmEma", "SimClr", "build_method"]


def _options(cls: type[Method]) -> list[str]:
    """Keyword options of a method's constructor, its parents' included (for `**kwargs` pass-through)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Method or "__init__" not in vars(klass):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name not in ("self", "encoder") and param.kind is not param.VAR_KEYWORD and name not in names:
                names.append(name)
    return names


def build_method(name: str, encoder: Encoder, **kwargs: Any) -> Method:
    """Build a method by name (see `METHODS`) for `encoder`, with its keyword options.

    For "mlm_clip", `teacher` (required) is an `OpenClipTeacher` or a mapping of its keyword arguments
    (model_name, weights, image_size, project, ...; the student's mean/std default to `encoder.spec`'s).
    Raises `ConfigError` for an unknown name or option (listing the valid ones).
    """
    if name not in METHODS:
        raise ConfigError(f"pretraining method {name!r} is not one of {sorted(METHODS)}")
    cls = METHODS[name]
    allowed = _options(cls)
    if "teacher" in kwargs and "teacher" not in allowed:
        raise ConfigError(f"method {name!r} uses no open_clip teacher; set teacher=none (or use mlm_clip)")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {name!r}; valid options: {allowed}")
    if cls is MlmClip:
        teacher = kwargs.get("teacher")
        if teacher is None:
            raise ConfigError("method 'mlm_clip' needs an open_clip teacher (e.g. teacher=openclip_vitb16)")
        if isinstance(teacher, Mapping):
            options = {"student_mean": encoder.spec.mean, "student_std": encoder.spec.std, **teacher}
            kwargs["teacher"] = OpenClipTeacher(**options)
    return cls(encoder, **kwargs)
