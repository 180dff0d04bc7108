"""
Settings for every script, nanoGPT style: a script's settings are its module-level globals, and

    python train.py config/tinyshakespeare.py --batch_size=8 --compile=False

first runs the preset file (plain Python assignments), then applies each --key=value, and prints
each change as "Overriding: key = value". A value must have the type of the default it replaces (an
int is fine where a float is expected), and an unknown key is refused with the list of valid ones,
so a typo never silently trains the wrong model.
"""
import os
import sys
import traceback
import types


def configure(settings, argv=None, echo=None):
    """Override `settings` (a script's globals()) in place; returns all settings as {key: value}.

    Each override is printed to `echo`: stdout when None, stderr where stdout is for the output
    (generate.py), nowhere when False (train.py's ranks after the first)."""
    argv = sys.argv[1:] if argv is None else argv
    keys = sorted(k for k, v in settings.items()
                  if not k.startswith("_") and isinstance(v, (bool, int, float, str)))
    if "-h" in argv or "--help" in argv:
        print("settings (override as --key=value, or put them in a preset file given first):")
        for k in keys:
            print(f"  --{k}={settings[k]!r}")
        sys.exit(0)
    overrides = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                sys.exit(f"error: preset file {arg!r} not found (settings are given as "
                         "--key=value)")
            preset = read_preset(arg)
            for key, value in preset.items():
                # a preset may import math
                if not key.startswith("_") and not isinstance(value, types.ModuleType):
                    overrides[key] = _check(key, value, settings, keys, where=f" in {arg}")
        else:
            key, eq, text = arg[2:].partition("=")
            if not eq:
                sys.exit(f"error: {arg!r} has no value; write --{key}=VALUE")
            overrides[key] = _check(key, _parse(key, text, settings, keys), settings, keys)
    settings.update(overrides)
    for key, value in overrides.items():
        if echo is not False:
            print(f"Overriding: {key} = {value!r}", file=echo or sys.stdout)
    return {k: settings[k] for k in keys}


def check(settings, rules):
    """Exit with one line at the first setting out of range; rules: (name, ok, what it must be)."""
    for name, ok, must in rules:
        if not ok:
            sys.exit(f"error: --{name}={settings[name]!r} must be {must}")


def _parse(key, text, settings, keys):
    default = settings.get(key)
    if key not in keys:
        return text  # _check reports the unknown key
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        sys.exit(f"error: --{key} expects True or False, got {text!r}")
    if isinstance(default, (int, float)):
        try:
            return int(text) if isinstance(default, int) else float(text)
        except ValueError:
            sys.exit(f"error: --{key} expects {type(default).__name__}, got {text!r}")
    return text


def _check(key, value, settings, keys, where=""):
    if key not in keys:
        sys.exit(f"error: unknown setting {key!r}{where}; valid settings: {', '.join(keys)}")
    default = settings[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        sys.exit(f"error: {key}{where} expects {type(default).__name__}, got {value!r}")
    return value


def read_preset(path):
    """The assignments of a preset file, or a one-line exit naming the file and line that failed."""
    # one dict for globals and locals, so a comprehension in the preset sees its earlier lines
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            exec(compile(f.read(), path, "exec"), namespace)
    except SyntaxError as e:
        sys.exit(f"error: preset file {path}, line {e.lineno}: {e.msg}; a preset holds plain "
                 "assignments such as batch_size = 8")
    except UnicodeDecodeError as e:
        sys.exit(f"error: preset file {path} is not UTF-8 text ({e.reason})")
    except Exception as e:
        line = next((t.lineno for t in reversed(traceback.extract_tb(e.__traceback__))
                     if t.filename == path), "?")
        sys.exit(f"error: preset file {path}, line {line}: {type(e).__name__}: {e}")
    return namespace
