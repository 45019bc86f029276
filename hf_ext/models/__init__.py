"""Model architectures. Importing this package registers every architecture with the Auto classes."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.ispkg:
        importlib.import_module(f".{_info.name}", __name__)
