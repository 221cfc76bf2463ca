"""Builds the fused detector loops (shmpool/_kernel.c); metadata is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("shmpool._kernel", ["shmpool/_kernel.c"],
                             extra_compile_args=["-O3", "-std=c99"])])
