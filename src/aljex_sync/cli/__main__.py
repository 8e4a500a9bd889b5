"""``python -m aljex_sync.cli``: the ``aljex-sync`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
