"""Packages found, not listed: everything under sfport/, and the design card's top-level folders mapped under
the one importable name (protos/ -> sfport.protos, converters/ -> sfport.converters). Metadata: setup.cfg."""
from setuptools import find_packages, setup

MAPPED = {"sfport.protos": "protos", "sfport.converters": "converters"}

packages = find_packages(include=["sfport", "sfport.*"])
package_dir = {"sfport": "sfport"}
for name, folder in MAPPED.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]
    for sub in find_packages(where=folder):
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
