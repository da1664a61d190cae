"""nbhelpers: interpret text-to-image diffusion models (see README.md)."""
