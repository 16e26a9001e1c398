# attack: import what the sandbox must not have (the data generator, the services' libraries)
# and read this project's other files (the evaluator, the store, the tasks' secrets)
# expect: nothing imports and nothing of the project beyond the child's modules is readable
# (nothing prints ESCAPED); training then runs normally
import importlib
import os
import sys

import torch.nn as nn

for name in (
    "mnist1d",
    "grpc",
    "sqlalchemy",
    "transformers",
    "evo",
    "controller",
    "services.trainer.evaluator",
    "services.trainer.tasks",
    "services.lineage",
):
    try:
        importlib.import_module(name)
        print("ESCAPED import", name, flush=True)
    except ImportError as e:
        print("refused import", name, type(e).__name__, flush=True)
for extra in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3.11/site-packages"):
    sys.path.append(extra)
for name in ("grpc", "sqlalchemy", "apt_pkg", "dbus", "cryptography"):
    try:
        importlib.import_module(name)
        print("ESCAPED import via sys.path", name, flush=True)
    except ImportError:
        print("refused import via sys.path", name, flush=True)
here = os.path.dirname(os.path.dirname(os.path.abspath(__import__("services").__file__)))
for rel in (
    "services/trainer/evaluator.py",
    "services/trainer/tasks/__init__.py",
    "services/lineage/__init__.py",
    "pyproject.toml",
    ".git/HEAD",
    "tests/test_hostile.py",
):
    for root in (here, "/work/main", "/opt/evo", os.getcwd()):
        try:
            with open(os.path.join(root, rel)) as f:
                f.read(1)
            print("ESCAPED read", os.path.join(root, rel), flush=True)
        except OSError:
            pass
print(
    "tree seen:", sorted(os.listdir(os.path.dirname(__import__("services").__file__))), flush=True
)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
