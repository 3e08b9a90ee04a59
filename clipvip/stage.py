"""The stage contract: what every ``clipvip <stage>`` does the same way.

Usage (a stage module):
    from clipvip.stage import StageOptions, UserError, option, parse_options, stage_main, write_json_atomic

    @dataclass
    class EvaluateOptions(StageOptions):
        STAGE = "evaluate"
        batch_size: int = option(16, "encoding batch", minimum=1)
        device: str = option("auto", "auto (cuda when available) | cpu | cuda[:N]")

    @stage_main("evaluate")
    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        opts = EvaluateOptions.from_dict(parse_options(args.options))
        ...

- ``StageOptions.from_dict`` is strict: an unknown key, a wrong type or an out-of-range value raises
  ``OptionError`` naming the key path (``--options.batchsize`` on the command line, ``evaluate.options.batchsize``
  when the workflow checks the config at parse time), with a close-match suggestion and the valid keys.
  A numeric string is read as the number (YAML 1.1 reads ``1e-4`` as a string), anything else is refused.
- The options dataclass is the one place where a key, its default and its meaning live: the workflow builds
  every stage's options from its config section before any job runs (``clipvip.config.validate_config``).
- ``stage_main`` turns a ``UserError`` into one line on stderr and exit code 2 (no traceback), a full disk
  into one line naming the file and exit code 1; anything else is a bug and keeps its traceback.
- Atomic writes: ``atomic_path`` (a temp file beside the target, renamed on success, removed on failure),
  ``write_text_atomic``, ``write_json_atomic``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import functools
import json
import os
import signal
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator


class UserError(Exception):
    """Bad input from the user (options, paths, files): reported as one line, exit code 2."""


class OptionError(UserError):
    """A stage option that is unknown, of the wrong type or out of range; ``path`` is the dotted key."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


# ------------------------------------------------------------------------------------------------- options
def parse_options(text: str | None, flag: str = "--options") -> dict:
    """A stage's ``--options`` value: a JSON object (its config section) or ``@file.json``."""
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise UserError(f"{flag}: cannot read {text[1:]}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag}: not valid JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Callable[[], list] | tuple | None = None,
           minimum: float | None = None, maximum: float | None = None, factory: Callable | None = None):
    """A documented options field; ``choices`` may be a callable (registry names, resolved when checked)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, path: str) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, list, dict, or unions of them with None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        # Non-string types first, so "5" is an int for `int | str` but "epoch" stays a string.
        ordered = sorted((m for m in members if m is not type(None)), key=lambda m: m is str)
        for member in ordered:
            try:
                return _coerce(value, member, path)
            except OptionError:
                continue
        names = " or ".join("null" if m is type(None) else _type_name(m) for m in members)
        raise OptionError(path, f"{value!r} is not {names}")
    tp = origin or tp
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value.strip())
                if number.is_integer():
                    return int(number)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 (PyYAML, Snakemake) reads `1e-4` without a dot as the string "1e-4".
            with contextlib.suppress(ValueError):
                return float(value.strip())
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"option type {tp!r} is not supported by StageOptions")
    raise OptionError(path, f"{value!r} is not of type {_type_name(tp)}")


def did_you_mean(word: str, candidates) -> str:
    """``"; did you mean X?"`` for the closest candidate (spelling, or an acronym: learning_rate -> lr)."""
    candidates = list(candidates)
    acronym = "".join(part[:1] for part in word.split("_"))
    close = [c for c in candidates if len(acronym) > 1 and c == acronym]  # an exact acronym beats spelling
    close = close or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


@dataclasses.dataclass
class StageOptions:
    """Base of every stage's options; subclasses are dataclasses of ``option(...)`` fields."""

    STAGE: ClassVar[str] = "stage"

    @classmethod
    def option_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "--options", **context):
        values = dict(values or {})
        known = cls.option_fields()
        for key in values:
            if key not in known:
                raise OptionError(f"{where}.{key}", f"unknown option of `clipvip {cls.STAGE}`"
                                  f"{did_you_mean(key, known)} (valid: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        coerced = {}
        for key, value in values.items():
            path, meta = f"{where}.{key}", known[key].metadata
            value = _coerce(value, hints[key], path)
            choices = meta.get("choices")
            if value is not None and choices is not None:
                names = list(choices() if callable(choices) else choices)
                if value not in names:
                    raise OptionError(path, f"{value!r} is not one of {', '.join(map(str, names))}"
                                      f"{did_you_mean(str(value), map(str, names))}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if meta.get("minimum") is not None and value < meta["minimum"]:
                    raise OptionError(path, f"{value!r} is less than the minimum {meta['minimum']}")
                if meta.get("maximum") is not None and value > meta["maximum"]:
                    raise OptionError(path, f"{value!r} is greater than the maximum {meta['maximum']}")
            coerced[key] = value
        missing = [k for k, f in known.items() if k not in coerced and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise OptionError(f"{where}.{missing[0]}", "required option is missing")
        opts = cls(**coerced)
        opts.check(where, **context)
        return opts

    def check(self, where: str, **context) -> None:
        """Cross-field checks and derived defaults of a subclass; raise ``OptionError`` naming the key."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def help_text(cls) -> str:
        """One line per key: name, default and meaning (for ``--help`` epilogs and docs)."""
        lines = []
        for name, f in cls.option_fields().items():
            default = f.default if f.default is not dataclasses.MISSING else (
                "required" if f.default_factory is dataclasses.MISSING else f.default_factory())
            lines.append(f"  {name} = {default!r}: {f.metadata.get('help', '')}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- devices
def resolve_device(name: str = "auto") -> str:
    """``auto`` = cuda when available, else cpu; anything else is passed through."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def hide_progress(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a progress switch: None shows the bar only on a terminal."""
    return None if progress is None else not progress


def available_cpus() -> int:
    """CPUs this process may use (the SLURM/cgroup affinity mask, not the node's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------- atomic writes
class SigtermGuard:
    """While installed, SIGTERM raises ``SystemExit(143)`` so a job's ``finally`` removes its temp output,
    and the signal is remembered: an exception raised while h5py or decord is inside a C callback can be
    printed as "Exception ignored" and lost, so a writer calls ``check()`` before each item and before it
    publishes, and a terminated job never publishes. Off the main thread it installs nothing.

        guard = SigtermGuard.install()
        try: ...; guard.check(); os.replace(tmp, out)
        finally: guard.restore()
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = None

    @classmethod
    def install(cls) -> "SigtermGuard":
        guard = cls()
        if threading.current_thread() is threading.main_thread():
            guard._previous = signal.signal(signal.SIGTERM, guard)
        return guard

    def __call__(self, signum, frame):
        self.signum = signum
        raise SystemExit(128 + signum)

    def check(self) -> None:
        if self.signum is not None:
            raise SystemExit(128 + self.signum)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``, on any failure removed.

    A reader therefore sees either the old file or the complete new one, never a half-written file, and a
    failed write (disk full, kill by exception) leaves no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data, fsync: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", fsync=fsync)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as h5py reports it ("file write failed: ... errno = 28", no errno attribute)."""
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "errno = 28" in str(exc)
                                         or "No space left" in str(exc))


# ---------------------------------------------------------------------------------------------- main(argv)
def stage_main(name: str):
    """Decorate a stage's ``main(argv) -> int``: user errors become one line and exit 2, a full disk exit 1."""

    def wrap(func: Callable[[list[str] | None], int | None]):
        @functools.wraps(func)
        def main(argv: list[str] | None = None) -> int:
            try:
                return int(func(argv) or 0)
            except UserError as exc:
                print(f"clipvip {name}: error: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:
                if is_disk_full(exc):
                    where = f" writing {exc.filename}" if exc.filename else ""
                    print(f"clipvip {name}: error: no space left on device{where}", file=sys.stderr)
                    return 1
                raise

        return main

    return wrap
