"""Registries: the single source of the names users write in ``config.yaml`` (encoders, losses, launchers,
captioner kinds, stages).

Usage:
    from clipvip.registry import VIDEO_ENCODERS
    VIDEO_ENCODERS.names()            # ["full_attention", "meanpool", "seqtransformer", "vip", ...]
    VIDEO_ENCODERS.get("vip")         # the registered object; an unknown name raises with a suggestion

    @VIDEO_ENCODERS.register("mine")  # in any module: selectable in config.yaml, trainable, evaluable
    class MyEncoder(...): ...

Each registry knows the module that registers its built-in entries and imports it on first use. Modules
named in the environment variable ``CLIPVIP_PLUGINS`` (comma-separated) are imported too, in every process
(the Snakemake process validating the config and each stage's job), so a user's own encoder or loss in one
file becomes selectable everywhere: ``CLIPVIP_PLUGINS=my_encoders snakemake ...``.
"""
from __future__ import annotations

import importlib
import os

from clipvip.stage import UserError, did_you_mean

PLUGINS_ENV = "CLIPVIP_PLUGINS"


def load_plugins() -> None:
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"{PLUGINS_ENV}: cannot import plugin module {name!r}: {exc}") from exc


class Registry:
    """Name -> object; ``builtin`` is the module (or tuple of modules) whose import registers the built-in
    entries."""

    def __init__(self, kind: str, builtin: str | tuple[str, ...]):
        self.kind, self.builtin = kind, builtin
        self._items: dict[str, object] = {}
        self._loaded = False

    def register(self, name: str, obj=None):
        """``REG.register("x", obj)`` or ``@REG.register("x")``; re-registering a name replaces it."""
        if obj is not None:
            self._items[name] = obj
            return obj

        def decorate(target):
            self._items[name] = target
            return target

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in (self.builtin,) if isinstance(self.builtin, str) else self.builtin:
                importlib.import_module(module)
            load_plugins()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str):
        self._load()
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)} "
                            f"(registered: {', '.join(sorted(self._items))})")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __getitem__(self, name: str):
        return self.get(name)

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


VIDEO_ENCODERS = Registry("video encoder", "clipvip.model.encoders")
# recognition_ce (Vita-CLIP action recognition) lives beside its metrics in clipvip.recognition.
LOSSES = Registry("loss", ("clipvip.losses", "clipvip.recognition"))
LAUNCHERS = Registry("launcher", "clipvip.distributed")
CAPTIONER_KINDS = Registry("captioner kind", "clipvip.captions")
TINY_CAPTIONERS = Registry("tiny captioner kind", "clipvip.tiny_models")
FEATURE_EXTRACTORS = Registry("feature extractor", "clipvip.features_extractors")
