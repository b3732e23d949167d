"""Packaging for Pydron: a semi-automatic parallelizing compiler for Python 3.10+."""
from setuptools import find_packages, setup

setup(
    name="pydron",
    version="0.1.0",
    description="Run sequential Python in parallel with two decorators",
    packages=find_packages(include=["pydron", "pydron.*"]),
    python_requires=">=3.10",
    install_requires=[
        "networkx>=2.8",
        "cloudpickle>=2.0",
        "twisted>=22.10",
        "paramiko>=3.0",
        "apache-libcloud>=3.6",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "numpy", "moto[ec2]>=5", "flask", "flask-cors"],
        "bench": ["numpy", "dask[distributed]"],
        "examples": ["numpy"],
    },
)
