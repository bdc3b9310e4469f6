"""`python -m lockgate`: the `lockgate` command."""

from lockgate.gateway.cli import main

raise SystemExit(main())
