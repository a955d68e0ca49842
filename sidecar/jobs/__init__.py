"""Orchestration of backups and restores of Docker apps."""
