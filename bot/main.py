"""Start-up: read configuration, refuse clearly if it is wrong, then serve."""

from __future__ import annotations

import os
import sys

from dotenv import load_dotenv

from bot.config import load_settings
from bot.logs import configure_logging


def main() -> int:
    # A .env in the working directory fills in what the environment does not set.
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    settings = load_settings(os.environ)
    if isinstance(settings, list):
        print("finetune-bot cannot start; fix the configuration:", file=sys.stderr)
        for problem in settings:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.secrets())
    from bot.server import serve  # heavy imports only once the configuration is known good

    serve(settings)
    return 0
