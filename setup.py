"""Builds shmpool's optional C extension; metadata is in pyproject.toml.

Without a C compiler (or with SHMPOOL_NO_EXTENSION=1) the package installs
without it and runs on its numpy/Python fallback, which gives the same
answers more slowly.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["module.c", "kernel.c", "cache.c", "serve.c"]


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any toolchain failure
            self._skip(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any toolchain failure
            self._skip(e)

    def _skip(self, e):
        print(f"shmpool: building the C extension failed ({e}); installing the pure-Python "
              "fallback, which gives the same answers more slowly", file=sys.stderr)


ext = [] if os.environ.get("SHMPOOL_NO_EXTENSION", "") not in ("", "0") else [
    Extension("shmpool._native", [f"shmpool/csrc/{s}" for s in SOURCES], py_limited_api=True,
              depends=[f"shmpool/csrc/{h}" for h in ("cache.h", "kernel.h", "proto.h", "serve.h")],
              extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno",
                                  "-Wall", "-Wextra", "-Wno-unused-parameter",
                                  "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
              extra_link_args=["-pthread"])]

setup(ext_modules=ext, cmdclass={"build_ext": OptionalBuildExt},
      options={"bdist_wheel": {"py_limited_api": "cp311"}} if ext else {})
