"""metalib: the shared library of the meta-learning workbook.

One module per idea; chapters import from here and never paste its code. See the book's
landing page for the map of modules and chapters.
"""

__version__ = "0.1.0"
