"""The package version, in a module of its own: every layer may read it without importing the
package's public face (``batchgen/__init__.py``)."""

__version__ = "0.1.0"
