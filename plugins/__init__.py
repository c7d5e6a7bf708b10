"""The bundled plugins of respan-gateway, one package per feature (``respan_plugins.<feature>``).

Each registers through the ``respan_gateway`` entry-point group, as a third-party plugin would.
"""
