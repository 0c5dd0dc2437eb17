"""``pip install .`` (not only the editable install CI uses) ships what the library needs."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_and_the_scene_and_no_bytecode(tmp_path):
  src = tmp_path / "src"
  shutil.copytree(REPO / "panda_rl", src / "panda_rl",
                  ignore=shutil.ignore_patterns("*.egg-info"))
  (src / "panda_rl" / "__pycache__").mkdir(exist_ok=True)
  (src / "panda_rl" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"")
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  out = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
       str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "would be ignored" not in out.stdout + out.stderr  # setuptools' package warning
  (wheel,) = (tmp_path / "dist").glob("panda_rl-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {p.relative_to(REPO).as_posix() for p in (REPO / "panda_rl").rglob("*.py")
             if "__pycache__" not in p.parts}
  assert modules <= names, sorted(modules - names)
  assert "panda_rl/envs/assets/panda_pick_cube.xml" in names
  assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
