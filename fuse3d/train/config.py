"""Typed training configs: dataclasses whose fields are the command line.

``command_line(Config)`` makes an ``argparse`` parser with one ``--flag`` per field (its type, default
and the field's ``help`` metadata), and ``parse(Config, argv)`` returns a ``Config``, so a trainer
takes one typed object instead of a ``Namespace`` passed deep into the code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence, Type, TypeVar, Union, get_args, get_origin, get_type_hints

C = TypeVar("C")


REQUIRED = dataclasses.MISSING


def option(default, help: str):
    """A config field with its command-line help (``REQUIRED``: no default, a required flag)."""
    return dataclasses.field(default=default, metadata={"help": help})


def _base(tp):
    """``Optional[X]`` → ``X``."""
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def command_line(cls: Type[C], description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "") + " (default: %(default)s)"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helptext)
        else:
            required = f.default is dataclasses.MISSING
            parser.add_argument(flag, type=tp, required=required, default=None if required else f.default,
                                help=helptext)
    return parser


def parse(cls: Type[C], argv: Optional[Sequence[str]] = None, description: str = "") -> C:
    args = command_line(cls, description).parse_args(argv)
    return cls(**vars(args))


def to_json(config) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def save_config(config, path: Path) -> None:
    Path(path).write_text(json.dumps(to_json(config), indent=1) + "\n")
