"""Adapters to third-party libraries (torchdeq, torchattacks, higher, kornia).

Installed as ``jiio_ext.adapters``; each adapter imports its library lazily.
"""

__all__: list[str] = []
