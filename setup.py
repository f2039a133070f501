"""Maps the top-level ``kernels/`` folder into the distribution as ``allocator.kernels``.

A top-level import package named ``kernels`` would shadow the Hugging Face package that
transformers probes for, so the folder is never installed under its own name.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["allocator", "allocator.*"])
kernel_packages = [
    "allocator.kernels" + p[len("kernels") :]
    for p in find_packages(include=["kernels", "kernels.*"])
]
package_dir = {"allocator.kernels": "kernels"}
for sub in kernel_packages[1:]:
    package_dir[sub] = sub.replace("allocator.kernels", "kernels").replace(".", "/")

setup(packages=packages + kernel_packages, package_dir=package_dir)
