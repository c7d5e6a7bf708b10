"""Importing this plugin fails: the gateway must name it, or never import it when disabled."""

raise RuntimeError("respan_broken_plugin cannot be imported")
