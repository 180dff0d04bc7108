"""
Settings for every script, nanoGPT style: the globals between the two "# -----" rules at a
script's top, set by a preset file given first, then by each --key=value, to the default's type.
"""
import linecache
import re
import sys
import tokenize
import traceback
import types
from pathlib import Path

from errors import Error, print_errors_as_one_line

BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def configure(settings, argv=None, echo=None):
    """Override `settings` (a script's globals()) in place, printing each override to `echo` (None:
    stdout, False: nowhere), and return all settings as {key: value}."""
    print_errors_as_one_line()  # a script's errors, raised anywhere, end it with one line
    argv = sys.argv[1:] if argv is None else argv
    block = settings_block(settings)
    defaults = {k: v for k, v in sorted(settings.items()) if k in dict(block)
                and not k.startswith("_") and isinstance(v, (bool, int, float, str))}
    if "-h" in argv or "--help" in argv:
        doc = (settings.get("__doc__") or "").strip()
        print(f"{doc}\n\nsettings (override as --key=value, or in a preset file given first):")
        for name, comment in block:
            if name in defaults:
                print((f"  --{name}={settings[name]!r}".ljust(34) + f"  {comment}").rstrip())
            elif not name:
                print(comment)
        raise SystemExit(0)  # as argparse's --help does
    overrides = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise Error(f"{arg!r} has no value; write --{key}=VALUE")
            overrides[key] = _setting(key, text, defaults)
        elif not Path(arg).is_file():
            raise Error(f"preset file {arg!r} not found (settings are given as --key=value)")
        else:
            for key, value in read_preset(arg).items():
                overrides[key] = _setting(key, value, defaults, f" in {arg}")
    settings.update(overrides)
    for key, value in overrides.items() if echo is not False else ():
        print(f"Overriding: {key} = {value!r}", file=echo or sys.stdout)
    return {**defaults, **overrides}


def settings_block(settings):
    """[(name, comment)] of the lines between the first two rules of the script whose globals are
    `settings`: each assignment, and each comment line with name "". Each global for a dict."""
    lines = linecache.getlines(settings.get("__file__") or "")  # [] for a dict
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"# -{20,}\n", line)][:2]
    if len(rules) < 2:
        return [(key, "") for key in sorted(settings)]
    comments = {t.start[0] - 1: t.string.lstrip("# ") for t in tokenize.generate_tokens(
        iter(lines).__next__) if t.type == tokenize.COMMENT}
    names = {i: lines[i].partition("=")[0].strip() for i in range(rules[0] + 1, rules[1])}
    return [(name if name.isidentifier() else "", comments.get(i, ""))
            for i, name in names.items() if name.isidentifier() or i in comments]


def check(settings, rules):
    """Exit with one line at the first setting out of range; rules: (name, ok, what it must be)."""
    for name, ok, must in rules:
        if not ok:
            raise Error(f"--{name}={settings[name]!r} must be {must}")


def _setting(key, value, defaults, where=""):
    """`value` for `key` with its default's type: the text of --key=value is parsed to it."""
    if key not in defaults:
        raise Error(f"unknown setting {key!r}{where}; valid settings: {', '.join(defaults)}")
    kind = type(defaults[key])
    if not where:  # the text of --key=value
        try:
            return BOOLS[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            expects = "True or False" if kind is bool else kind.__name__
            raise Error(f"--{key} expects {expects}, got {value!r}")
    if type(value) is not kind and not (kind is float and type(value) is int):
        raise Error(f"{key}{where} expects {kind.__name__}, got {value!r}")
    return kind(value)  # an int becomes a float


def read_preset(path):
    """The assignments of a preset file, or a one-line exit naming the file and line that failed."""
    namespace = {}  # as globals and locals: a comprehension in the preset sees its earlier lines
    try:
        exec(compile(Path(path).read_text(encoding="utf-8"), path, "exec"), namespace)
    except SyntaxError as e:
        raise Error(f"preset file {path}, line {e.lineno}: {e.msg}; a preset holds plain "
                    "assignments such as batch_size = 8")
    except UnicodeDecodeError as e:
        raise Error(f"preset file {path} is not UTF-8 text ({e.reason})")
    except Exception as e:
        line = next((t.lineno for t in reversed(traceback.extract_tb(e.__traceback__))
                     if t.filename == path), "?")
        raise Error(f"preset file {path}, line {line}: {type(e).__name__}: {e}")
    return {k: v for k, v in namespace.items()  # not __builtins__, nor a module it imports
            if not k.startswith("_") and not isinstance(v, types.ModuleType)}
