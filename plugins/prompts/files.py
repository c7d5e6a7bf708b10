"""Prompt files: one prompt per file (``*.toml``, ``*.yaml``/``*.yml``) in the prompts folder.

Every file is checked whole (its shape, the messages, and every template compiled); an error names
the file and the key (``support.toml: `versions[1].messages[0].content`: template syntax error, line
2: ...``). ``respan-gateway prompts check DIR`` runs the same checks.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from respan_gateway.config import describe_validation_error
from respan_gateway.hookspecs import PromptInfo

from .engine import compile_version
from .model import Invalid, Prompt, PromptFile, Version, check_prompt_id, version_info
from .render import TemplateEnvironment

SUFFIXES = (".toml", ".yaml", ".yml")


class PromptFileError(ValueError):
    """A prompt file that cannot be used: ``path`` and the message naming the key."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def prompt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))


def read_file(path: Path) -> Any:
    import yaml  # here: only a folder of prompt files needs it, not every worker

    text = path.read_bytes()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text.decode())
        return yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise PromptFileError(path, f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PromptFileError(path, f"not valid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise PromptFileError(path, f"not valid YAML: {exc}") from None


def load_file(path: Path, env: TemplateEnvironment) -> Prompt:
    """The prompt of one file, every template compiled; :class:`PromptFileError` naming the key."""
    data = read_file(path)
    if not isinstance(data, dict):
        raise PromptFileError(path, "expected a table (a prompt with its `versions`)")
    try:
        spec = msgspec.convert(data, PromptFile)
    except msgspec.ValidationError as exc:
        raise PromptFileError(path, describe_validation_error(exc)) from None
    try:
        prompt_id = check_prompt_id(spec.prompt_id if spec.prompt_id is not None else path.stem)
        if not spec.versions:
            raise Invalid("versions", "a prompt file needs at least one version")
        versions: list[Version] = []
        for i, entry in enumerate(spec.versions):
            number = entry.version if entry.version is not None else (versions[-1].number + 1 if versions else 1)
            if number < 1 or (versions and number <= versions[-1].number):
                raise Invalid(f"versions[{i}].version", "versions are numbered from 1, each above the one before")
            version = Version(version_info(number, entry, key=f"versions[{i}]"))
            compile_version(env, version, prefix=f"versions[{i}]")
            versions.append(version)
        deployed = spec.deployed if spec.deployed is not None else versions[-1].number
        if deployed not in {v.number for v in versions}:
            raise Invalid("deployed", f"there is no version {deployed}")
    except Invalid as exc:
        if exc.key == "prompt_id" and spec.prompt_id is None:
            raise PromptFileError(path, f"the file name is not a usable prompt id ({exc.message}); set `prompt_id`") from None
        raise PromptFileError(path, str(exc)) from None
    mtime = path.stat().st_mtime
    info = PromptInfo(prompt_id=prompt_id, name=spec.name or prompt_id, description=spec.description, source="file",
                      deployed_version=deployed, latest_version=versions[-1].number, created_at=mtime, updated_at=mtime)
    return Prompt(info, versions, tenants=spec.tenants, path=str(path))


def load_folder(folder: Path, env: TemplateEnvironment) -> tuple[dict[str, Prompt], list[PromptFileError]]:
    """Every prompt of the folder, and the errors of the files that could not be loaded (a prompt id
    used by two files is an error of the second)."""
    prompts: dict[str, Prompt] = {}
    errors: list[PromptFileError] = []
    if not folder.is_dir():
        return prompts, [PromptFileError(folder, "not a folder")]
    for path in prompt_files(folder):
        try:
            prompt = load_file(path, env)
        except PromptFileError as exc:
            errors.append(exc)
            continue
        except OSError as exc:
            errors.append(PromptFileError(path, f"cannot be read ({exc.strerror})"))
            continue
        other = prompts.get(prompt.prompt_id)
        if other is not None:
            errors.append(PromptFileError(path, f"`prompt_id`: `{prompt.prompt_id}` is already the id of {Path(other.path or '').name}"))
            continue
        prompts[prompt.prompt_id] = prompt
    return prompts, errors
