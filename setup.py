"""Maps each top-level part folder to its ``liveclass.<part>`` package.

The parts live in their own folders (``sdk/``, ``origin/``...) so that the
repository shows the system's shape; installed, they sit under one
``liveclass`` namespace and nothing else lands in site-packages.
"""

from setuptools import find_packages, setup

PARTS = {
    "sdk": "sdk",
    "edge_node": "edge_node",
    "origin": "origin",
    "routing": "routing",
    "cli": "cli",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in PARTS.items():
    top = f"liveclass.{name}"
    packages.append(top)
    package_dir[top] = folder
    for sub in find_packages(where=folder):
        packages.append(f"{top}.{sub}")
        package_dir[f"{top}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
