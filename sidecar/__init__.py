"""websoft9-backup: back up and restore the apps of a Docker host."""

__version__ = "0.1.0"
