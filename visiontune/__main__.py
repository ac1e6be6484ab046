"""``python -m visiontune`` (and ``torchrun -m visiontune``) run the CLI."""

from .cli import main

raise SystemExit(main())
