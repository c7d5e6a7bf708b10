"""``respan-gateway prompts check DIR``: validate a folder of prompt files (for a prompt repository's CI).

Every file is loaded as the gateway loads it (shape, messages, every template compiled); each error
names the file and the key. Exit status 0 when every file is usable, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="prompts_command", required=True)
    check = sub.add_parser("check", help="validate a folder of prompt files (TOML/YAML)")
    check.add_argument("folder", help="the folder of prompt files")


def run(args: argparse.Namespace) -> int:
    from .files import load_folder  # Jinja: only when the command runs, not at every start
    from .render import Limits, TemplateEnvironment

    folder = Path(args.folder)
    prompts, errors = load_folder(folder, TemplateEnvironment(Limits()))
    for prompt in sorted(prompts.values(), key=lambda p: p.prompt_id):
        versions = ", ".join(str(n) for n in sorted(prompt.versions))
        print(f"ok    {Path(prompt.path or '').name}: prompt `{prompt.prompt_id}`, versions {versions}, "
              f"deployed {prompt.info.deployed_version}")
    for error in errors:
        print(f"error {error}", file=sys.stderr)
    if not prompts and not errors:
        print(f"{folder}: no prompt files (*.toml, *.yaml, *.yml)")
    return 1 if errors else 0
