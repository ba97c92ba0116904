"""The wheel is the product: built from the checkout, installed outside it, every module of every
mapped folder (instructray/, actors/, orchestrator/, api/) imports from the installed copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAPPED = {  # pyproject's package-dir: import prefix → folder
    "instructray": REPO / "instructray",
    "instructray.actors": REPO / "actors",
    "instructray.orchestrator": REPO / "orchestrator",
    "instructray.api": REPO / "api",
}
# Imports every module of the installed package except __main__ (that one starts the server),
# then prints where they came from.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import instructray
names = ["instructray"] + sorted(
    m.name for m in pkgutil.walk_packages(instructray.__path__, "instructray.")
    if not m.name.endswith(".__main__"))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = repr(err)
try:
    ext = importlib.import_module("instructray.rollout.vllm_ext").WeightSyncExtension.__name__
except Exception as err:
    ext = repr(err)
files = {n: getattr(sys.modules.get(n), "__file__", None) for n in names}
print(json.dumps({"modules": names, "failed": failed, "files": files, "ext": ext}))
"""


def source_modules() -> set[str]:
    """Every module the checkout holds under the mapped folders (they do not overlap)."""
    found = set()
    for prefix, folder in MAPPED.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join((prefix, *parts)))
    return found


def test_the_wheel_holds_every_module_and_they_import_from_it(tmp_path: Path) -> None:
    dist, site, src = tmp_path / "dist", tmp_path / "site", tmp_path / "src"
    # A copy of what the build reads: an in-tree build would reuse a stale build/lib of the
    # checkout (which can hide a missing package) and leave a fresh one behind.
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in MAPPED.values():
        shutil.copytree(folder, src / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src],
        check=True,
        cwd=tmp_path,
        capture_output=True,  # setuptools' notes on the static/ data folders
    )
    [wheel] = dist.glob("instructray-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True
    )

    # -S: no .pth files, so the checkout's editable install cannot answer for the wheel; the
    # dependencies come from this interpreter's site-packages, after the installed wheel.
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{deps}", "PYTHONNOUSERSITE": "1"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_ALL],
        cwd=tmp_path,  # not the checkout: its instructray/ would shadow the installed one
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["failed"] == {}
    assert set(result["modules"]) == source_modules()
    assert all(str(f).startswith(str(site)) for f in result["files"].values() if f)
    assert result["ext"] == "WeightSyncExtension"  # what vLLM loads by name
    static = site / "instructray" / "api" / "static"
    assert (static / "index.html").is_file() and any(static.glob("*.js"))
