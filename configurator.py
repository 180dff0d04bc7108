"""
Settings for every script, nanoGPT style: a script's settings are the globals it assigns between
the two "# -----" rules at its top (what it computes after them is no setting), and

    python train.py config/tinyshakespeare.py --batch_size=8 --compile=False

first runs the preset file (plain Python assignments), then applies each --key=value, and prints
each change as "Overriding: key = value". A value must have the type of the default it replaces (an
int is fine where a float is expected), and an unknown key is refused with the list of valid ones,
so a typo never silently trains the wrong model. --help lists the settings block as the file has
it: each setting with its default and comment, in its order and groups.
"""
import ast
import io
import os
import re
import sys
import tokenize
import traceback
import types

from errors import Error, print_errors_as_one_line

RULE = re.compile(r"# -{20,}")  # the lines above and below a script's settings


def configure(settings, argv=None, echo=None):
    """Override `settings` (a script's globals()) in place; returns all settings as {key: value}.

    Each override is printed to `echo`: stdout when None, stderr where stdout is for the output
    (generate.py), nowhere when False (train.py's ranks after the first)."""
    print_errors_as_one_line()  # a script's errors, raised anywhere, end it with one line
    argv = sys.argv[1:] if argv is None else argv
    block = settings_block(settings.get("__file__"))
    keys = sorted(k for k, v in settings.items() if not k.startswith("_") and (
        isinstance(v, (bool, int, float, str)) and (block is None or k in dict(block))))
    if "-h" in argv or "--help" in argv:
        doc = (settings.get("__doc__") or "").strip()
        print(f"{doc}\n\nsettings (override as --key=value, or in a preset file given first):")
        for name, comment in block or [(k, "") for k in keys]:
            if name in keys:
                print((f"  --{name}={settings[name]!r}".ljust(34) + f"  {comment}").rstrip())
            elif not name:
                print(f"{comment}")
        raise SystemExit(0)  # as argparse's --help does
    overrides = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise Error(f"preset file {arg!r} not found (settings are given as "
                            "--key=value)")
            preset = read_preset(arg)
            for key, value in preset.items():
                # a preset may import math
                if not key.startswith("_") and not isinstance(value, types.ModuleType):
                    overrides[key] = _check(key, value, settings, keys, where=f" in {arg}")
        else:
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise Error(f"{arg!r} has no value; write --{key}=VALUE")
            overrides[key] = _check(key, _parse(key, text, settings, keys), settings, keys)
    settings.update(overrides)
    for key, value in overrides.items():
        if echo is not False:
            print(f"Overriding: {key} = {value!r}", file=echo or sys.stdout)
    return {k: settings[k] for k in keys}


def settings_block(path):
    """[(name, comment)] of the lines between a script's first two rules, in order: each
    assignment with its comment on the line, and each comment line with name "". None for a
    file without rules (or no file: a dict of settings)."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        source = f.read()
    rules = [i + 1 for i, line in enumerate(source.splitlines()) if RULE.fullmatch(line)][:2]
    if len(rules) < 2:
        return None
    comments = {t.start[0]: t.string.lstrip("# ") for t in tokenize.generate_tokens(
        io.StringIO(source).readline) if t.type == tokenize.COMMENT and rules[0] < t.start[0]}
    names = {node.lineno: target.id for node in ast.parse(source).body
             if isinstance(node, ast.Assign) for target in node.targets
             if isinstance(target, ast.Name)}
    return [(names.get(line, ""), comments.get(line, "")) for line in range(*rules)
            if line in names or line in comments]


def check(settings, rules):
    """Exit with one line at the first setting out of range; rules: (name, ok, what it must be)."""
    for name, ok, must in rules:
        if not ok:
            raise Error(f"--{name}={settings[name]!r} must be {must}")


def _parse(key, text, settings, keys):
    default = settings.get(key)
    if key not in keys:
        return text  # _check reports the unknown key
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise Error(f"--{key} expects True or False, got {text!r}")
    if isinstance(default, (int, float)):
        try:
            return int(text) if isinstance(default, int) else float(text)
        except ValueError:
            raise Error(f"--{key} expects {type(default).__name__}, got {text!r}")
    return text


def _check(key, value, settings, keys, where=""):
    if key not in keys:
        raise Error(f"unknown setting {key!r}{where}; valid settings: {', '.join(keys)}")
    default = settings[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise Error(f"{key}{where} expects {type(default).__name__}, got {value!r}")
    return value


def read_preset(path):
    """The assignments of a preset file, or a one-line exit naming the file and line that failed."""
    # one dict for globals and locals, so a comprehension in the preset sees its earlier lines
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            exec(compile(f.read(), path, "exec"), namespace)
    except SyntaxError as e:
        raise Error(f"preset file {path}, line {e.lineno}: {e.msg}; a preset holds plain "
                    "assignments such as batch_size = 8")
    except UnicodeDecodeError as e:
        raise Error(f"preset file {path} is not UTF-8 text ({e.reason})")
    except Exception as e:
        line = next((t.lineno for t in reversed(traceback.extract_tb(e.__traceback__))
                     if t.filename == path), "?")
        raise Error(f"preset file {path}, line {line}: {type(e).__name__}: {e}")
    return namespace
