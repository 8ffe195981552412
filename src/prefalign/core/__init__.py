"""The lowest layer: project-wide errors and drop counting, column and sequence names, JSON-lines I/O.

Every other package may import from here; this package imports nothing from the project.
"""
