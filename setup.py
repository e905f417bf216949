# Only what pyproject.toml cannot say: build the native runtime (twzlinux._twzrt) and twzd's
# seccomp notification calls (twzlinux._twznotif) with cffi.
from setuptools import setup

setup(cffi_modules=["twzlinux/native/build.py:ffibuilder",
                    "twzlinux/native/build.py:notif_builder"])
