"""Write a named Snakemake SLURM profile, so that ``snakemake --profile slurm`` works on a cluster.

Usage:
    clipvip install-profile --account ACCT --cpu-partition CPU --gpu-partition GPU [--gpus-per-node N]
        [--pretrain-nodes N] [--finetune-nodes N] [--name slurm] [--dest DIR] [--template DIR] [--force]
        [--no-check]
    snakemake --profile slurm --configfile presets/pretrain_hdvila.yaml presets/msrvtt.yaml my_paths.yaml

The profile is the template ``profiles/slurm/config.yaml`` of this checkout with its ``<account>``,
``<cpu-partition>`` and ``<gpu-partition>`` placeholders filled in, written to
``$XDG_CONFIG_HOME/snakemake/<name>/config.yaml`` (``~/.config/snakemake/<name>`` when XDG_CONFIG_HOME is
unset), the folder Snakemake searches for ``--profile <name>``.

- default-resources get ``slurm_account`` = ``--account`` and ``slurm_partition`` = ``--cpu-partition``;
  every rule whose template partition is ``<gpu-partition>`` (captions, pretrain, finetune, evaluate) gets
  ``--gpu-partition``.
- the multi-rank training rules (pretrain, finetune) get ``nodes`` (``--pretrain-nodes``,
  ``--finetune-nodes``), ``tasks`` = nodes x ``--gpus-per-node`` (one rank per GPU), ``gres: gpu:<N>`` per
  node, ``tasks_per_gpu: 1`` and ``mpi: "srun --ntasks-per-node=<N>"``. Omitted, the template's values are
  kept (4 GPUs per node, pretrain on 2 nodes, finetune on 1). The single-GPU rules keep ``gres: gpu:1``.
- where ``sinfo`` is on PATH the partitions must exist, where ``sacctmgr`` is, the account must
  (``--no-check`` skips both, e.g. when writing a profile for another cluster).
- an existing profile folder is only overwritten with ``--force``.

Errors print one line ``clipvip install-profile: error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from clipvip.stage import UserError, stage_main

PROG = "clipvip install-profile"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "profiles" / "slurm"
PROFILE_FILE = "config.yaml"
# Template placeholder -> the flag that fills it.
PLACEHOLDER_FLAGS = {"<account>": "--account", "<cpu-partition>": "--cpu-partition",
                     "<gpu-partition>": "--gpu-partition"}
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
# Multi-rank training rules: rule -> the flag giving its node count.
TRAINING_RULES = {"pretrain": "--pretrain-nodes", "finetune": "--finetune-nodes"}
# Snakemake's names for a profile's main file (snakemake.cli.get_profile_dir).
PROFILE_FILE_NAMES = re.compile(r"(profile|config)(\.v\d+\+)?\.yaml")
LIST_LIMIT = 20  # names shown in an "unknown partition/account" error


class ProfileError(UserError):
    """A user-facing error: printed as one line by ``stage_main``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise ProfileError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--account", metavar="ACCT", help="SLURM account (sbatch -A) for every job")
    p.add_argument("--cpu-partition", metavar="PART", help="partition of the CPU rules (frames, frames_index, tables, ...)")
    p.add_argument("--gpu-partition", metavar="PART", help="partition of the GPU rules (captions, pretrain, finetune, evaluate)")
    p.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs per node of the training jobs, one rank each "
                                                      "(default: the template's, 4)")
    p.add_argument("--pretrain-nodes", type=int, metavar="N", help="nodes of the post-pretraining job (default: template's, 2)")
    p.add_argument("--finetune-nodes", type=int, metavar="N", help="nodes of each fine-tuning job (default: template's, 1)")
    p.add_argument("--name", default="slurm", help="profile name, as in `snakemake --profile NAME` (default: slurm)")
    p.add_argument("--dest", type=Path, metavar="DIR", help="folder that holds the profiles (default: Snakemake's user config "
                                             "folder, $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)")
    p.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, metavar="DIR",
                   help=f"template profile folder or YAML file (default: {DEFAULT_TEMPLATE})")
    p.add_argument("--force", action="store_true", help="overwrite an existing profile of that name")
    p.add_argument("--no-check", action="store_true", help="do not ask sinfo/sacctmgr whether partitions and "
                                                           "account exist")
    return p


# --------------------------------------------------------------------------------------------------------
# where Snakemake looks for profiles


def snakemake_config_dir() -> Path:
    """The user config folder Snakemake searches for ``--profile NAME`` (after the working directory)."""
    try:  # exactly what Snakemake uses: platformdirs.AppDirs("snakemake", "snakemake").user_config_dir
        from platformdirs import AppDirs

        return Path(AppDirs("snakemake", "snakemake").user_config_dir)
    except ImportError:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
        return base / "snakemake"


# --------------------------------------------------------------------------------------------------------
# template -> profile


def load_template(template: Path) -> tuple[Path, str, dict]:
    path = template
    if path.is_dir():
        path = next((path / n for n in ("profile.yaml", PROFILE_FILE) if (path / n).is_file()), path / PROFILE_FILE)
    if not path.is_file():
        raise ProfileError(f"template profile not found: {path} (pass --template DIR, the profiles/slurm "
                           f"folder of a clipvip checkout)")
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read template {path}: {' '.join(str(exc).split())}")
    if not isinstance(data, dict):
        raise ProfileError(f"template {path} is not a YAML mapping")
    return path, text, data


def _substitute(value, mapping: dict[str, str]):
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    return value


def _placeholders(value, where: str = "") -> list[tuple[str, str]]:
    """(key path, placeholder) of every <...> left in the profile."""
    if isinstance(value, str):
        return [(where, m) for m in PLACEHOLDER.findall(value)]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _placeholders(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in _placeholders(v, f"{where}[{i}]")]
    return []


def _gres_gpus(gres) -> tuple[str, int] | None:
    """'gpu:4' -> ('gpu:', 4); 'gpu:a100:4' -> ('gpu:a100:', 4); else None."""
    m = re.fullmatch(r"(gpu:(?:[^:,]+:)?)(\d+)", str(gres or "").strip())
    return (m.group(1), int(m.group(2))) if m else None


def _positive_int(value, what: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ProfileError(f"{what} must be a whole number, got {value!r}")
    if number < 1:
        raise ProfileError(f"{what} must be at least 1, got {value}")
    return number


def fill(template: dict, *, account: str | None, cpu_partition: str | None, gpu_partition: str | None,
         gpus_per_node: int | None, nodes: dict[str, int | None]) -> dict:
    """The template with placeholders filled and the training rules' derived values made consistent."""
    values = {"<account>": account, "<cpu-partition>": cpu_partition, "<gpu-partition>": gpu_partition}
    profile = _substitute(copy.deepcopy(template), {k: v for k, v in values.items() if v is not None})

    defaults = profile.setdefault("default-resources", {}) or {}
    profile["default-resources"] = defaults
    if account is not None:
        defaults["slurm_account"] = account
    if cpu_partition is not None:
        defaults["slurm_partition"] = cpu_partition

    rules = profile.get("set-resources") or {}
    for rule, flag in TRAINING_RULES.items():
        if nodes.get(rule) is not None and rule not in rules:
            raise ProfileError(f"{flag}: the template has no set-resources.{rule} to apply it to")
    for rule, resources in rules.items():
        if not isinstance(resources, dict) or not (rule in TRAINING_RULES or "mpi" in resources):
            continue
        template_gres = _gres_gpus(resources.get("gres"))
        gpus = gpus_per_node if gpus_per_node is not None else (template_gres[1] if template_gres else None)
        if gpus is None:
            raise ProfileError(f"set-resources.{rule} of the template has no gres gpu:N; pass --gpus-per-node")
        gpus = _positive_int(gpus, f"set-resources.{rule} GPUs per node")
        n = nodes.get(rule)
        n = _positive_int(n if n is not None else resources.get("nodes", 1), f"set-resources.{rule}.nodes")
        resources["nodes"] = n
        resources["tasks"] = n * gpus
        resources["tasks_per_gpu"] = 1
        resources["gres"] = f"{template_gres[0] if template_gres else 'gpu:'}{gpus}"
        mpi = str(resources.get("mpi") or "")
        if re.search(r"--ntasks-per-node[= ]\d+", mpi):
            resources["mpi"] = re.sub(r"(--ntasks-per-node[= ])\d+", rf"\g<1>{gpus}", mpi)
        else:
            resources["mpi"] = f"srun --ntasks-per-node={gpus}"

    left = _placeholders(profile)
    if left:
        parts = []
        for placeholder in dict.fromkeys(p for _, p in left):
            places = [where for where, p in left if p == placeholder]
            more = f" (+{len(places) - 1} more)" if len(places) > 1 else ""
            flag = PLACEHOLDER_FLAGS.get(placeholder)
            how = f"pass {flag}" if flag else "no flag fills it, edit the template"
            parts.append(f"{placeholder} in {places[0]}{more}: {how}")
        raise ProfileError("unfilled placeholder " + "; ".join(parts))
    return profile


def partitions_of(profile: dict) -> list[str]:
    names = [(profile.get("default-resources") or {}).get("slurm_partition")]
    names += [r.get("slurm_partition") for r in (profile.get("set-resources") or {}).values() if isinstance(r, dict)]
    return list(dict.fromkeys(str(n) for n in names if n is not None))


def accounts_of(profile: dict) -> list[str]:
    names = [(profile.get("default-resources") or {}).get("slurm_account")]
    names += [r.get("slurm_account") for r in (profile.get("set-resources") or {}).values() if isinstance(r, dict)]
    return list(dict.fromkeys(str(n) for n in names if n is not None))


# --------------------------------------------------------------------------------------------------------
# what the cluster knows


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _cluster_list(cmd: list[str], what: str) -> list[str] | None:
    """Names printed one per line by a SLURM client; None when the client is absent or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _warn(f"{what} not checked: `{shlex.join(cmd)}` failed ({exc})")
        return None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        _warn(f"{what} not checked: `{shlex.join(cmd)}` failed: {reason}")
        return None
    names = [line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()]
    return list(dict.fromkeys(names))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT]) or "none"
    return shown + (f" ... ({len(names) - LIST_LIMIT} more)" if len(names) > LIST_LIMIT else "")


def check_cluster(profile: dict, flags_by_value: dict[str, str]) -> list[str]:
    """Raise if sinfo/sacctmgr (where available) do not know the profile's partitions/account."""
    checked = []
    known = _cluster_list(["sinfo", "-h", "-o", "%P"], "partitions")
    if known is not None:
        unknown = [p for p in partitions_of(profile) if p not in known]
        if unknown:
            named = ", ".join(f"'{p}'" + (f" ({flags_by_value[p]})" if p in flags_by_value else "") for p in unknown)
            raise ProfileError(f"unknown SLURM partition{'s' if len(unknown) > 1 else ''} {named}; "
                               f"sinfo lists: {_listing(known)}")
        checked.append("partitions (sinfo)")
    known = _cluster_list(["sacctmgr", "-nP", "show", "account", "format=account"], "account")
    if known is not None:
        lowered = {k.lower() for k in known}  # SLURM stores account names in lower case
        unknown = [a for a in accounts_of(profile) if a.lower() not in lowered]
        if unknown:
            named = ", ".join(f"'{a}'" for a in unknown)
            raise ProfileError(f"unknown SLURM account {named} (--account); sacctmgr lists: {_listing(known)}")
        checked.append("account (sacctmgr)")
    return checked


# --------------------------------------------------------------------------------------------------------
# writing


def _display(path: Path) -> str:
    repo = DEFAULT_TEMPLATE.parents[1]
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)


_MISSING = object()
_KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(?:\s+(.*))?$")
_VALUE_COMMENT = re.compile(r"^(\"[^\"]*\"|'[^']*'|[^#]*?)(\s+#.*)?$")


def _lookup(data, path: list[str]):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _scalar(value) -> str:
    return json.dumps(value) if isinstance(value, str) else yaml.safe_dump(value).splitlines()[0]


def edit_template_text(text: str, profile: dict) -> str | None:
    """The template's own text (comments kept, its leading comment block dropped) with the profile's values
    in place; None where that text would not load as exactly ``profile`` (then the profile is dumped)."""
    out: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        comment_or_blank = not line.strip() or line.lstrip().startswith("#")
        if not out and comment_or_blank:
            continue
        m = None if comment_or_blank else _KEY_LINE.match(line)
        if m is None:
            out.append(line)
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if not rest or rest.startswith("#"):  # a mapping's key
            out.append(line)
            continue
        vc = _VALUE_COMMENT.match(rest)
        new = _lookup(profile, [k for _, k in stack])
        if vc is None or new is _MISSING:
            return None
        value, comment = vc.group(1), vc.group(2) or ""
        try:
            old = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
        if old != new or type(old) is not type(new):
            value = _scalar(new).ljust(len(value)) if comment else _scalar(new)
        out.append(f"{m.group(1)}{key}: {value}{comment}")
    result = "\n".join(out) + "\n"
    try:
        return result if yaml.safe_load(result) == profile else None
    except yaml.YAMLError:
        return None


def render(profile: dict, *, name: str, template_file: Path, template_text: str, argv: list[str]) -> str:
    command = shlex.join(["clipvip", "install-profile", *argv])
    shown = _display(template_file)
    source = shown if shown == str(template_file) else f"{shown} ({template_file.resolve()})"
    header = [
        f"# Snakemake profile {name!r} for the clipvip workflow, generated from the template",
        f"# {source} by",
        f"#   {command}",
        "# Regenerate it (e.g. after updating clipvip) with the same command plus --force; edits made here are",
        f"# then lost. Use:  snakemake --profile {name} --configfile <presets and your paths>.yaml",
        "# Training rules: tasks = nodes x GPUs per node (one rank per GPU), gres and mpi per node, and",
        "# tasks_per_gpu: 1 (without it the SLURM plugin adds --ntasks-per-gpu=<tasks>).",
    ]
    body = edit_template_text(template_text, profile)
    if body is None:
        body = yaml.safe_dump(profile, sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(header) + "\n" + body


def profile_folder(dest: Path | None, name: str) -> Path:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ProfileError(f"--name must be a plain folder name, got {name!r}")
    return (dest if dest is not None else snakemake_config_dir()) / name


def write_profile(folder: Path, text: str, force: bool) -> Path:
    target = folder / PROFILE_FILE
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise ProfileError(f"{folder} exists and is not a folder")
        if not force:
            raise ProfileError(f"profile {folder} already exists; pass --force to overwrite it")
        shadows = [p.name for p in folder.iterdir() if p.name != PROFILE_FILE and PROFILE_FILE_NAMES.fullmatch(p.name)]
        if shadows:
            raise ProfileError(f"{folder / shadows[0]} may take precedence over the generated {PROFILE_FILE}; "
                               f"remove it first")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{PROFILE_FILE}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise ProfileError(f"cannot write {target}: {exc.strerror or exc}")
    return target


# --------------------------------------------------------------------------------------------------------


def install(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.gpus_per_node is not None and args.gpus_per_node < 1:
        raise ProfileError(f"--gpus-per-node must be at least 1 (one training rank per GPU), got {args.gpus_per_node}")
    for rule, flag in TRAINING_RULES.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < 1:
            raise ProfileError(f"{flag} must be at least 1, got {value}")
    for flag in ("--account", "--cpu-partition", "--gpu-partition"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and (not value.strip() or PLACEHOLDER.fullmatch(value) or re.search(r"\s", value)):
            raise ProfileError(f"{flag} must be a SLURM name, got {value!r}")

    folder = profile_folder(args.dest, args.name)
    if folder.exists() and not args.force:
        raise ProfileError(f"profile {folder} already exists; pass --force to overwrite it")
    template_file, template_text, template = load_template(args.template)
    profile = fill(template, account=args.account, cpu_partition=args.cpu_partition,
                   gpu_partition=args.gpu_partition, gpus_per_node=args.gpus_per_node,
                   nodes={"pretrain": args.pretrain_nodes, "finetune": args.finetune_nodes})
    checked = []
    if not args.no_check:
        flags_by_value = {v: f for f, v in (("--gpu-partition", args.gpu_partition),
                                            ("--cpu-partition", args.cpu_partition)) if v is not None}
        checked = check_cluster(profile, flags_by_value)

    target = write_profile(folder, render(profile, name=args.name, template_file=template_file,
                                          template_text=template_text, argv=argv),
                           args.force)
    print(f"wrote {target}")
    for rule in TRAINING_RULES:
        r = (profile.get("set-resources") or {}).get(rule)
        if isinstance(r, dict) and "tasks" in r:
            print(f"  {rule}: {r['nodes']} node(s) x {r['tasks'] // r['nodes']} GPU(s) = {r['tasks']} ranks, "
                  f"partition {r.get('slurm_partition')}")
    if checked:
        print(f"  checked against the cluster: {', '.join(checked)}")
    on_search_path = folder.parent.resolve() == snakemake_config_dir().resolve()
    use = args.name if on_search_path else str(folder)
    print(f"use it with:  snakemake --profile {use} --configfile <presets and your paths>.yaml")
    if not on_search_path:
        print(f"  ({folder.parent} is not Snakemake's profile folder {snakemake_config_dir()}: pass the full path)")
    return 0


@stage_main("install-profile")
def main(argv: list[str] | None = None) -> int:
    return install(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
