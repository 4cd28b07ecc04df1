"""The web dashboard (``sluice dashboard``); needs the ``dashboard`` extra."""

from sluice.web.app import create_app

__all__ = ["create_app"]
