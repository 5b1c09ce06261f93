"""Model families, one per file; each registers its named variants (nets.registry).

Adding a file here adds a family: the registry imports every module of this folder on its
first lookup."""
