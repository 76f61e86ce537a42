"""The applications built on the jiio-ext core: benches, training tasks, demo, report and CLI.

The core (``jiio_ext`` outside this package) imports torch alone and never imports from here.
These modules depend on the core, the adapters and the optional libraries (torchdeq,
torchattacks, higher, kornia, scikit-learn, matplotlib).

Example:
    >>> from jiio_ext.apps.cli import build_parser
    >>> build_parser().prog
    'jiio'
"""

__all__: list[str] = []
