"""Text-prompting schemes for SAM, one file each, and a registry that builds them from a config."""
