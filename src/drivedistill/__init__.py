"""drivedistill: real-time driving planners distilled from vision-language teachers."""

from __future__ import annotations

__version__ = "0.1.0"
