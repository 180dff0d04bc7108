import os
import sys

# The scripts live at the top of the repo; tests import them as modules.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# model.py loads OpenBLAS before mlx.core, as every script does; importing it first makes that so for every test
# module, whatever it imports first.
import model  # noqa: E402, F401
