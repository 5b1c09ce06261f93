"""TFDS builders for the datasets this project can prepare offline, one module each.

All are skipped in the TFDS registry (TFDS already owns `fashion_mnist`); reach them through
`data.catalog` (LOCAL_DATASETS, which imports a builder's module when it is first used).
"""
