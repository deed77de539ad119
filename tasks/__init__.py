"""One Prefect task per migration step, each a thin wrapper over plain functions."""
