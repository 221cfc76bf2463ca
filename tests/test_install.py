"""Installing: a wheel without a compiler, a checkout without a compiler, and
the numpy fallback running the test suites (issue 11.1).  Slow-ish (two fresh
virtual environments); run in CI on every change."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "tests" / "test_smoke.py")


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def fresh_venv(where: Path) -> Path:
    run([sys.executable, "-m", "venv", str(where)])
    return where / "bin"


def no_compiler_env(bin_dir: Path, **extra) -> dict:
    """Only the venv's own executables on PATH: no cc, gcc, clang, ld."""
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "PYTHONPATH",
                                                            "SHMPOOL_NO_EXTENSION")}
    env.update(PATH=str(bin_dir), **extra)
    return env


def clean_copy(where: Path) -> Path:
    """The checkout as a fresh clone has it: no venv, no build products (a
    stale build/ would put an old extension into the wheel)."""
    shutil.copytree(ROOT, where, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "wheelhouse", "*.so", "__pycache__", "bin",
        "node_modules", ".hypothesis", "results"))
    return where


def smoke(bin_dir: Path, tmp: Path, expect_native: str):
    env = no_compiler_env(bin_dir, SHMPOOL_EXPECT_NATIVE=expect_native)
    where = run([str(bin_dir / "python"), "-c", "import shmpool, shutil; "
                 "print(shmpool.__file__, shutil.which('gcc'), shutil.which('cc'))"],
                env=env, cwd=tmp)
    path, gcc, cc = where.stdout.split()
    assert str(tmp) in path and gcc == cc == "None", where.stdout   # the install, no compiler
    run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", SMOKE],
        env=env, cwd=tmp)


def test_the_wheel_installs_and_works_without_a_compiler(tmp_path):
    """make wheel's steps: build, auditwheel repair (abi3, manylinux tag);
    then a fresh venv with no compiler on PATH installs and runs it."""
    dist, house = tmp_path / "dist", tmp_path / "wheelhouse"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
         str(clean_copy(tmp_path / "src"))])
    [built] = list(dist.glob("*.whl"))
    assert "cp311-abi3" in built.name, built.name
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run([str(Path(sys.executable).parent / "auditwheel"), "repair", "--wheel-dir", str(house),
         str(built)], env=env)
    [wheel] = list(house.glob("*.whl"))
    assert "manylinux" in wheel.name and "abi3" in wheel.name, wheel.name
    bin_dir = fresh_venv(tmp_path / "venv")
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel), "pytest"],
        env=no_compiler_env(bin_dir))
    smoke(bin_dir, tmp_path, "1")


def test_a_checkout_installs_without_a_compiler_and_falls_back(tmp_path):
    bin_dir = fresh_venv(tmp_path / "venv")
    src = clean_copy(tmp_path / "src")
    r = run([str(bin_dir / "pip"), "install", "-v", str(src), "pytest"],
            env=no_compiler_env(bin_dir))
    assert "pure-Python fallback" in r.stdout + r.stderr
    smoke(bin_dir, tmp_path, "0")


@pytest.mark.parametrize("suite", ["tests/test_detect.py tests/test_kernel.py tests/test_plugins.py",
                                   "tests/test_server.py"])
def test_the_numpy_fallback_passes_the_suites(suite):
    """The same tests with SHMPOOL_NO_EXTENSION=1: the fallback's kernels,
    worker loop and host I/O give the same answers."""
    env = dict(os.environ, SHMPOOL_NO_EXTENSION="1")
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *suite.split()],
        env=env, cwd=ROOT)
