"""Moved to the package difiisr.stack: `python -m difiisr.stack up|down|status|env`; this shim keeps old calls."""
from difiisr.stack.cli import main
raise SystemExit(main())
