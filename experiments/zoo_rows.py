"""The rows of the zoo's results table: a config file, overrides, a name; parsed from `--configs`.

A row is written `[NAME=]CONFIG[:KEY=VALUE[:KEY=VALUE ...]]`:

  centernet_shapes                                    experiments/configs/centernet_shapes.py as it is
  no_skips=centernet_shapes:model.skip_connections=False
  small=centernet_shapes:model.width=8:model.neck_features=(32,16,16)
  mine=path/to/config.py:total_steps=100

CONFIG is a name in experiments/configs/ or a path to a config file; each KEY=VALUE is a `--config.KEY=VALUE`
override, parsed as train.py parses it. NAME (letters, digits, `_.-`) names the row in the table and its folder;
it defaults to the config's name and is required when there are overrides, so that a changed config never
appears under the plain config's name. Rows are separated by commas outside brackets and quotes
(`model.neck_features=(32,16,16)` stays whole); a `:` only starts an override when `KEY=` follows it.
"""

from __future__ import annotations

import dataclasses
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: `name`, the config file's absolute path `config`, its `overrides` ("key=value")."""

  name: str
  config: str
  overrides: tuple[str, ...] = ()

  def flags(self) -> list[str]:
    """Returns the train.py / eval.py flags that select this row's config."""
    return [f"--config={self.config}", *(f"--config.{o}" for o in self.overrides)]

  def spec(self) -> str:
    """Returns the row as `--configs` writes it (names in experiments/configs/ without their folder)."""
    config = display_config(self.config)
    if config.startswith("experiments/configs/") and config.endswith(".py") and config.count("/") == 2:
      config = config[len("experiments/configs/"):-len(".py")]
    head = config if self.name == config and not self.overrides else f"{self.name}={config}"
    return ":".join([head, *self.overrides])


def split_top_level(text: str, separator: str) -> list[str]:
  """Returns `text` split at each `separator` outside (), [], {} and quotes; raises ValueError if unbalanced."""
  parts, depth, quote, start = [], [], None, 0
  for i, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in _PAIRS:
      depth.append(_PAIRS[char])
    elif char in _PAIRS.values():
      if not depth or depth.pop() != char:
        raise ValueError(f"unbalanced {char!r} at position {i} of {text!r}")
    elif char == separator and not depth:
      parts.append(text[start:i])
      start = i + 1
  if depth or quote:
    raise ValueError(f"unclosed {(depth[-1:] or [quote])[0]!r} in {text!r}")
  parts.append(text[start:])
  return parts


def split_overrides(text: str) -> list[str]:
  """Returns `text` split at the top-level `:` that are followed by `KEY=` (so `gs://...` values stay whole)."""
  pieces = split_top_level(text, ":")
  merged = [pieces[0]]
  for piece in pieces[1:]:
    if _OVERRIDE.match(piece):
      merged.append(piece)
    else:
      merged[-1] += ":" + piece
  return merged


def resolve_config(config: str) -> str:
  """Returns the path of config file `config`: a name in experiments/configs/, or a path; FileNotFoundError if none."""
  path = config if config.endswith(".py") or os.sep in config else os.path.join(CONFIG_DIR, f"{config}.py")
  if not os.path.isfile(path):
    known = sorted(n[:-3] for n in os.listdir(CONFIG_DIR) if n.endswith(".py") and not n.startswith("_"))
    raise FileNotFoundError(f"no config file {path!r} for {config!r}; configs in experiments/configs/: {known}")
  return os.path.abspath(path)


def display_config(path: str) -> str:
  """Returns `path` relative to the repository when it lies inside it (the form stored with runs), else as given."""
  relative = os.path.relpath(os.path.abspath(path), ROOT)
  return path if relative.startswith("..") else relative.replace(os.sep, "/")


def _unquoted(override: str) -> str:
  """Returns KEY=VALUE with one pair of quotes around VALUE removed (quotes only protect commas and colons)."""
  key, equals, value = override.partition("=")
  if equals and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
    value = value[1:-1]
  return f"{key}{equals}{value}"


def parse_row(text: str) -> Row:
  """Returns the `Row` written `[NAME=]CONFIG[:KEY=VALUE ...]` (see the module docstring); ValueError if malformed."""
  head, *overrides = split_overrides(text.strip())
  name, _, config = head.partition("=") if "=" in head else ("", "", head)
  if not config:
    raise ValueError(f"row {text!r} names no config")
  path = resolve_config(config)
  default_name = os.path.splitext(os.path.basename(path))[0]
  if overrides and not name:
    raise ValueError(f"row {text!r} changes the config, so it needs a name: NAME={text}")
  name = name or default_name
  if not _NAME.match(name):
    raise ValueError(f"row name {name!r} must be letters, digits and _.- (it names the row's folder)")
  for override in overrides:
    if override.split("=", 1)[0] == "seed":
      raise ValueError(f"row {name!r} sets seed; the zoo sets config.seed from --seeds")
  return Row(name=name, config=path, overrides=tuple(_unquoted(o) for o in overrides))


def parse_rows(text: str) -> list[Row]:
  """Returns the rows of a `--configs` value (comma-separated rows); ValueError on a malformed or repeated name."""
  rows = [parse_row(part) for part in split_top_level(text, ",") if part.strip()]
  if not rows:
    raise ValueError("--configs names no row")
  names = [row.name for row in rows]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"rows {repeated} appear more than once; give each a distinct NAME=")
  return rows


def parse_overrides(text: str) -> tuple[str, ...]:
  """Returns the KEY=VALUE overrides of a comma-separated `--config_overrides` value; ValueError if one has no `=`."""
  overrides = tuple(_unquoted(part.strip()) for part in split_top_level(text, ",") if part.strip())
  for override in overrides:
    if not _OVERRIDE.match(override):
      raise ValueError(f"--config_overrides entry {override!r} is not KEY=VALUE")
    if override.split("=", 1)[0] == "seed":
      raise ValueError("--config_overrides sets seed; the zoo sets config.seed from --seeds")
  return overrides
