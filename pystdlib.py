"""
The built-in corpora, made from the Python standard library of the Python that runs prepare.py, so
always on disk: pystdlib (its modules' source and the pydoc help topics, a document each) and
pystdlib-chat (questions on its modules, functions and classes, answered from their own docstrings
and signatures).
"""
import collections
import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import re
import sys
import sysconfig
import warnings


# ----------------------------------------------------------------------------- pystdlib

STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files():
    """The standard library's modules, sorted: no test suites, installed packages or build
    configuration."""
    files = []
    for dirpath, dirnames, filenames in os.walk(sysconfig.get_paths()["stdlib"]):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("config-")]
        files += [os.path.join(dirpath, f) for f in filenames
                  if f.endswith(".py") and not f.startswith("test_")]
    # pydoc_data/topics.py is the help topics as one Python dict; they come as documents of their
    # own below
    return sorted(f for f in files if not f.endswith(os.path.join("pydoc_data", "topics.py")))


def stdlib_documents(files):
    from pydoc_data.topics import topics
    for path in files:
        # the built-in corpus must never fail to load
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()
    for key in sorted(topics):
        yield topics[key]


# ----------------------------------------------------------------------------- pystdlib-chat

# not imported: they act when imported (a browser, a poem), open windows or change the terminal,
# are another module under their own name (os.path is posixpath; os holds posix's functions;
# setuptools stands in for distutils), or are deprecated but imported by another deprecated one
# (aifc, asynchat) before they could warn
STDLIB_CHAT_SKIP = STDLIB_SKIP | {"antigravity", "this", "idlelib", "tkinter", "turtle",
                                  "turtledemo", "readline", "rlcompleter", "encodings",
                                  "genericpath", "posixpath", "ntpath", "posix", "nt", "distutils",
                                  "asyncore", "chunk"}
SYSTEM = "You answer questions about the Python standard library, briefly."


def stdlib_modules():
    """{name: module}, sorted by name: the standard library's public modules and their public
    submodules that import quietly here (no error, warning or output: deprecated ones warn), with
    os.path (posixpath) under that name. Imported in order of name: what warns can depend on what
    was imported before."""
    names = [n for n in sys.stdlib_module_names if not n.startswith("_")] + ["os.path"]
    todo, found = sorted(names, reverse=True), {}
    while todo:
        name = todo.pop()
        if name.rsplit(".", 1)[-1] in STDLIB_CHAT_SKIP or name in found:
            continue
        out = io.StringIO()
        with (warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out),
              contextlib.redirect_stderr(out)):
            warnings.simplefilter("always")
            try:
                module = importlib.import_module(name)
            except Exception:  # ImportError, or e.g. ctypes.wintypes' ValueError off Windows
                continue
        if not caught and not out.getvalue():
            found[name] = module
            todo += sorted((f"{name}.{m.name}" for m in pkgutil.iter_modules(
                getattr(module, "__path__", [])) if not m.name.startswith(("_", "test"))),
                reverse=True)
    return dict(sorted(found.items()))


def stdlib_api(modules):
    """{module name: [(name, object)]}: each public function and class once, by its own name (not
    an alias: array.array, not array.ArrayType), under the first module that defined it or lists it
    in __all__ from a module not listed (os.getcwd from posix), then its methods if a class."""
    listed, seen, api = {m.__name__ for m in modules.values()}, set(), {}
    for name, module in modules.items():
        api[name], exports = [], getattr(module, "__all__", ())
        for attr in exports or vars(module):
            obj = getattr(module, attr, None)
            home, own = getattr(obj, "__module__", None), getattr(obj, "__name__", attr)
            if ((inspect.isclass(obj) or inspect.isroutine(obj)) and attr[0] != "_"
                    and id(obj) not in seen
                    and (own == attr or getattr(module, own, None) is not obj)
                    and (home == module.__name__ or attr in exports and home not in listed)):
                seen.add(id(obj))
                api[name].append((attr, obj))
                if inspect.isclass(obj):
                    api[name] += [(f"{attr}.{k}", v) for k, v in vars(obj).items()
                                  if k[0] != "_" and inspect.isroutine(v)]
    return api


def first_paragraph(doc, limit=300):
    """A docstring's first paragraph on one line, less a leading signature ("sleep(seconds)"),
    cut after its last full sentence within limit characters; None if there is none."""
    for para in inspect.cleandoc(doc).split("\n\n") if isinstance(doc, str) else []:
        para = " ".join(para.split())
        if para and not re.fullmatch(r"[\w.]+\(.*\)( -> .*)?", para):
            cut = para.rfind(". ", 0, limit)
            return para if len(para) <= limit else para[:cut + 1] if cut > 0 else None
    return None


def signature_text(obj, limit=120):
    try:
        text = str(inspect.signature(obj))
    except Exception:  # none (ValueError), or a C signature naming what is not there (curses)
        return None
    # a default shown as <...> may hold an address or this process's state (sys.stdout)
    return text if len(text) <= limit and "<" not in text else None


def stdlib_chats(modules, val_every=20):
    """Yield (split, messages): questions on the standard library, answered from its own docstrings
    and signatures. Every val_every-th module (by name) is val, with all the questions on it. One
    conversation in five has a system prompt; a module's every fourth conversation, where it can,
    asks what a function does and then what arguments "it" takes: two turns."""
    # builtins, os and os.path (what people ask about most) stay in train
    rest = [name for name in modules if name not in ("builtins", "os", "os.path")]
    api, val, n = stdlib_api(modules), set(rest[val_every - 1::val_every]), 0
    unique = collections.Counter(attr for objects in api.values() for attr, _ in objects)
    for name, module in modules.items():
        talks = [[(f"What does the `{name}` module do?", about)]
                 if (about := first_paragraph(module.__doc__)) else []]
        for attr, obj in api[name]:
            shown = attr if name == "builtins" else f"{name}.{attr}"
            does, args = first_paragraph(obj.__doc__), signature_text(obj)
            does = does and (f"What does `{shown}` do?", does)
            args = args and (f"What arguments does `{shown}` take?", f"`{shown}{args}`")
            if does and args and len(talks) % 4 == 0:
                talks.append([does, ("What arguments does it take?", args[1])])
            else:
                talks += [[qa] for qa in (does, args) if qa]
            if name != "builtins" and "." not in attr and unique[attr] == 1:
                talks.append([(f"Which module is `{attr}` in?",
                               f"`{attr}` is in the `{name}` module: `{shown}`.")])
        for talk in filter(None, talks):
            n += 1
            yield "val" if name in val else "train", (
                [{"role": "system", "content": SYSTEM}] * (n % 5 == 0)
                + [{"role": role, "content": text} for qa in talk
                   for role, text in zip(("user", "assistant"), qa)])
