"""This repository's name for the fleet's supervisor, kept for its Procfile.

The supervisor ships inside the library as ``flows.supervisor`` (``flows
supervise``); this folder is not installed: ``python -m supervisor`` works
from a checkout only.
"""
