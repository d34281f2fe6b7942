"""``python -m vkprovider`` runs the CLI."""

from vkprovider.cli import main

raise SystemExit(main())
