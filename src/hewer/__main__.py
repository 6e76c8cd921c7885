from __future__ import annotations

from hewer.cli import main

main()
