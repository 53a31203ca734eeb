"""``python -m rehearsal demo|down``: see ``rehearsal/demo.py``."""

from rehearsal.demo import main

raise SystemExit(main())
