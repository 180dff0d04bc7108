"""Settings: --key=value and preset files override a script's globals, with types checked and typos
refused."""
import subprocess
import sys
from pathlib import Path

import pytest

from configurator import configure
from errors import Error

ROOT = Path(__file__).resolve().parent.parent


def defaults():
    return {"batch_size": 16, "learning_rate": 1e-3, "compile": True, "out_dir": "out",
            "_private": 1, "np": pytest}


def test_overrides_are_parsed_to_the_defaults_types():
    s = defaults()
    result = configure(s, ["--batch_size=8", "--learning_rate=3e-4", "--compile=False",
                           "--out_dir=runs/a=b"])
    assert ((s["batch_size"], s["learning_rate"], s["compile"], s["out_dir"])
            == (8, 3e-4, False, "runs/a=b"))
    assert result == {"batch_size": 8, "learning_rate": 3e-4, "compile": False,
                      "out_dir": "runs/a=b"}
    # an int is fine where a float is expected
    configure(s, ["--learning_rate=1", "--compile=true"])
    assert (s["learning_rate"] == 1.0 and isinstance(s["learning_rate"], float)
            and s["compile"] is True)


@pytest.mark.parametrize("arg, message", [
    ("--batch_sise=8",
     "unknown setting 'batch_sise'; valid settings: batch_size, compile, learning_rate, out_dir"),
    ("--batch_size=8.5", "--batch_size expects int, got '8.5'"),
    ("--learning_rate=fast", "--learning_rate expects float, got 'fast'"),
    ("--compile=maybe", "--compile expects True or False, got 'maybe'"),
    ("--batch_size", "has no value"),
    ("--_private=2", "unknown setting '_private'"),
    ("nonexistent.py", "preset file 'nonexistent.py' not found"),
])
def test_bad_settings_exit_with_a_message_naming_the_problem(arg, message):
    s = defaults()
    with pytest.raises(Error) as e:
        configure(s, [arg])
    assert message in str(e.value) and not str(e.value).startswith("error: ")  # the script adds it
    assert s == defaults()  # nothing half-applied


def test_preset_file_then_command_line(tmp_path):
    preset = tmp_path / "preset.py"
    preset.write_text("batch_size = 4\nlearning_rate = 2e-3  # a comment\n")
    s = defaults()
    configure(s, [str(preset), "--batch_size=2"])
    assert (s["batch_size"], s["learning_rate"]) == (2, 2e-3)
    preset.write_text("batch_size = 'four'\n")
    with pytest.raises(Error, match="batch_size in .*preset.py expects int, got 'four'"):
        configure(defaults(), [str(preset)])
    preset.write_text("bach_size = 4\n")
    with pytest.raises(Error, match="unknown setting 'bach_size' in"):
        configure(defaults(), [str(preset)])


def test_scripts_refuse_unknown_settings_with_one_line_and_nonzero_exit():
    for script in ("train.py", "generate.py"):
        r = subprocess.run([sys.executable, script, "--bogus=1"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode != 0
        assert r.stderr.strip().startswith("error: unknown setting 'bogus'; valid settings:")
        assert len(r.stderr.strip().splitlines()) == 1


def test_each_override_is_echoed_and_a_broken_preset_names_its_line(tmp_path, capsys):
    preset = tmp_path / "preset.py"
    preset.write_text("batch_size = 4\n")
    configure(defaults(), [str(preset), "--compile=False"])
    assert capsys.readouterr().out.splitlines() == ["Overriding: batch_size = 4",
                                                    "Overriding: compile = False"]
    configure(defaults(), ["--batch_size=2"], echo=False)
    assert capsys.readouterr().out == ""
    for text, message in [("batch_size = 4\nlearning_rate = (1e-3\n",
                           "preset.py, line 2: '(' was never closed"),
                          ("batch_size = 4\n\nbatch_size = 1 // 0\n",
                           "preset.py, line 3: ZeroDivisionError")]:
        preset.write_text(text)
        with pytest.raises(Error) as e:
            configure(defaults(), [str(preset)])
        assert str(e.value).startswith("preset file ") and message in str(e.value), e.value


def test_help_teaches_the_settings_block_and_computed_values_are_no_settings(tmp_path):
    script = tmp_path / "script.py"
    rule = "# " + "-" * 77
    script.write_text("\n".join([
        '"""Does a thing."""', "import sys", f"sys.path.insert(0, {str(ROOT)!r})",
        "from configurator import configure", "before = 1.5", rule, "# the shape",
        "dim = 64  # the width # of it", "# comes next", 'url = "http://x/#y"', "flag = True",
        rule, "rank = 0  # computed", "configure(globals())", ""]))
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == "Does a thing." and "before" not in r.stdout
    assert [line.split()[0] for line in lines[lines.index("the shape"):]] == [
        "the", "--dim=64", "comes", "--url='http://x/#y'", "--flag=True"]
    dim = lines[lines.index("the shape") + 1]
    assert dim.startswith("  --dim=64 ") and dim.endswith("  the width # of it")
    for computed in ("--rank=1", "--before=2.0"):
        r = subprocess.run([sys.executable, str(script), computed], capture_output=True,
                           text=True)
        assert r.returncode != 0 and "unknown setting" in r.stderr
        assert "valid settings: dim, flag, url" in r.stderr
    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert "  --warmup_iters=50" in r.stdout and "the rate rises linearly" in r.stdout
    assert not any(f"--{name}=" in r.stdout for name in ("rank", "world", "master", "started"))
