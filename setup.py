"""The wheel's package list; everything else is in pyproject.toml. It is code only because pyproject's `find`
cannot add the folders that [tool.setuptools.package-dir] maps in from the top of the tree."""

from setuptools import find_namespace_packages, find_packages, setup

# cuda/'s subfolders are listed too: setuptools wants every folder it ships files from to be a listed package.
NATIVE = ["splatkit.cuda", *(f"splatkit.cuda.{name}" for name in find_namespace_packages("cuda"))]
setup(packages=[*find_packages(include=["splatkit", "splatkit.*"]), *NATIVE, "splatkit.apps.player"])
