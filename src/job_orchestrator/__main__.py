from __future__ import annotations

import sys

from job_orchestrator.cli import main

sys.exit(main())
