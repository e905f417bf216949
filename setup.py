# Only what pyproject.toml cannot say: build the native runtime (twzlinux._twzrt) with cffi.
from setuptools import setup

setup(cffi_modules=["twzlinux/native/build.py:ffibuilder"])
